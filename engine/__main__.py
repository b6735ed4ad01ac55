"""``python -m engine``: the engine-side command line (the bot starts it as a child process).

Sub-commands live in :data:`COMMANDS`, one entry each: a function adding its arguments and a
handler ``(args, settings) -> exit code``. Adding a command (e.g. ``worker``) is one entry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.config import ConfigError, Settings, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """A sub-command: its words (``("models", "check")``), help, arguments and handler."""

    words: tuple[str, ...]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Settings], int]


def _preset(settings: Settings):
    from engine import models

    eng = settings.engine
    if eng.preset == "tiny":
        return models.TINY_PRESET
    return models.flux_dev_preset(eng.pulid_version, eng.eva_source)


def models_download(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch the configured preset's weights (asks for the licence acknowledgement)."""
    from engine import models

    eng = settings.engine
    try:
        paths = models.download(
            _preset(settings), eng.model_dir, eng.hf_cache, accept_licence=args.accept_licence,
            say=print,
        )  # fmt: skip
    except models.LicenceNotAccepted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} weight sets in {eng.model_dir}")
    return models_check(args, settings)


def models_check(args: argparse.Namespace, settings: Settings) -> int:
    """Print one line per missing or mismatched file; exit 1 when there is any."""
    from engine import models

    preset = _preset(settings)
    if preset.tiny:
        print("preset tiny: built in code, no weight files to check")
        return 0
    problems = models.check(
        preset, settings.engine.model_dir, hashes=getattr(args, "hashes", False)
    )
    for line in problems:
        print(line)
    print("all weights present" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run one engine worker on one device (see engine.worker); 1 when it cannot start."""
    from engine.jobs_startup import worker_command

    return worker_command(args, settings)


def _worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device (default: the first of engine.devices)")
    parser.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--grace", type=float, help="seconds a stopping job may still run (10)")
    parser.add_argument("--worker-id", help="unique worker name (default: host:pid:device:…)")


def _download_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept-licence", action="store_true", help="accept the model licences")


def _check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hashes", action="store_true", help="also verify pinned sha256 values")


COMMANDS: list[Command] = [
    Command(("models", "download"), "fetch the configured preset's weights", _download_args,
            models_download),
    Command(("models", "check"), "validate the configured preset's local weights", _check_args,
            models_check),
    Command(("worker",), "run one engine worker: claim and run jobs", _worker_args, worker),
]  # fmt: skip


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="pulid-bot engine")
    parser.add_argument("--config", type=Path, help="TOML settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="cmd0", required=True, metavar="COMMAND")
    }
    for command in commands:
        for depth in range(1, len(command.words)):
            key = command.words[:depth]
            if key not in groups:
                group = groups[key[:-1]].add_parser(key[-1], help=f"{key[-1]} commands")
                groups[key] = group.add_subparsers(dest=f"cmd{depth}", required=True)
        leaf = groups[command.words[:-1]].add_parser(command.words[-1], help=command.help)
        command.add_arguments(leaf)
        leaf.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return args.handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
