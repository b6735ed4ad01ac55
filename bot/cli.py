"""The ``pulid-bot`` command line.

The bot side never imports the engine: engine commands run ``python -m engine …`` as a child
process, so this module (and ``pulid-bot --help``) starts without torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bot.startup import StartupError
from storage.config import (
    ENV_CONFIG_FILE,
    ConfigError,
    Settings,
    load_settings,
    masked,
)
from storage.errors import StorageError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Self-hosted identity-preserving image bot: FLUX.1-dev with PuLID on Discord, Telegram
and a local chat console.

Every setting has a built-in default (SQLite in ./data, the 'tiny' preset on the CPU, no
tokens); a TOML file (--config, $PULID_BOT_CONFIG or ./config.toml) and PULID_BOT__SECTION__KEY
environment variables override them. See config.example.toml.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="pulid-bot", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (default: ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run_commands(sub)
    _add_admin_commands(sub)
    return parser


def _add_run_commands(sub: Any) -> None:
    sub.add_parser("serve", help="run every configured adapter and one engine worker per device")
    eng = sub.add_parser("engine", help="run one engine worker (any host reaching the database)")
    eng.add_argument("--device", help="torch device for this worker (default: first configured)")
    eng.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    chat = sub.add_parser("chat", help="local chat console speaking the bot's commands")
    chat.add_argument("--script", type=Path, help="read commands from this file instead of stdin")
    chat.add_argument("--out", type=Path, default=Path("chat-out"), help="folder for images")
    demo = sub.add_parser("demo", help="the whole product on embedded defaults, scripted")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for images")


def _add_admin_commands(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="create or migrate the database schema")
    cfg = sub.add_parser("config", help="settings")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("show", help="print the effective settings (secrets masked)")
    models = sub.add_parser("models", help="model weights")
    msub = models.add_subparsers(dest="models_command", required=True)
    dl = msub.add_parser("download", help="fetch the configured preset's weights")
    dl.add_argument("--accept-licence", action="store_true", help="accept the model licences")
    msub.add_parser("check", help="validate the configured preset's local weights")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pulid-bot`` script."""
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
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    handler = _HANDLERS[_command_key(args)]
    try:
        return handler(args, settings)
    except (StorageError, StartupError) as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _command_key(args: argparse.Namespace) -> str:
    for attr in ("db_command", "config_command", "models_command"):
        if getattr(args, attr, None):
            return f"{args.command} {getattr(args, attr)}"
    return str(args.command)


def _config_show(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(masked(settings), indent=2))
    return 0


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from storage.db import upgrade

    asyncio.run(upgrade(settings.database.url))
    print("database schema is up to date")
    return 0


def engine_command(args: list[str]) -> list[str]:
    """The child-process command line of ``python -m engine``."""
    return [sys.executable, "-m", "engine", *args]


#: Chat-platform secrets an engine worker never needs.
_ADAPTER_ENV = ("PULID_BOT__DISCORD__", "PULID_BOT__TELEGRAM__")


def engine_env(config: Path | None) -> dict[str, str]:
    """The child's environment: ours without chat-platform settings, plus the config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ADAPTER_ENV)}
    if config is not None:
        env[ENV_CONFIG_FILE] = str(config.resolve())
    return env


def _run_engine(argv: list[str]) -> Callable[[argparse.Namespace, Settings], int]:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        extra = list(argv)
        if args.command == "engine":
            extra += ["--device", args.device] if args.device else []
            extra += ["--burst"] if args.burst else []
        if getattr(args, "accept_licence", False):
            extra.append("--accept-licence")
        return subprocess.call(engine_command(extra), env=engine_env(args.config))

    return run


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from bot.serve import run_serve

    return run_serve(settings, config=args.config)


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from bot.console import run_chat

    return asyncio.run(run_chat(settings, script=args.script, out_dir=args.out))


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from bot.demo import run_demo

    return run_demo(settings, out_dir=args.out)


_HANDLERS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "serve": _serve,
    "engine": _run_engine(["worker"]),
    "chat": _chat,
    "demo": _demo,
    "db upgrade": _db_upgrade,
    "config show": _config_show,
    "models download": _run_engine(["models", "download"]),
    "models check": _run_engine(["models", "check"]),
}


if __name__ == "__main__":
    sys.exit(main())
