"""Model weights of a preset: where they come from, download, check, fingerprint.

Layout inside the model folder (``[engine] model_dir``)::

    FLUX.1-dev/                        diffusers layout (a link into the Hugging Face cache)
    pulid_flux_v0.9.1.safetensors      PuLID-FLUX (v0.9.0 selectable)
    EVA02_CLIP_L_336_psz14_s6B.pt      EVA02-CLIP-L-14-336, official EVA-CLIP layout
    antelopev2/scrfd_10g_bnkps.onnx    insightface SCRFD detector
    antelopev2/glintr100.onnx          insightface ArcFace R100
    parsing_bisenet.pth                facexlib BiSeNet

Hub files are fetched with huggingface_hub into the configured cache (resumable) and linked into
the model folder. BiSeNet only exists as a GitHub release asset, which huggingface_hub cannot
fetch: it is downloaded with urllib, resuming a partial ``.part`` file with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LICENCE_NOTICE = """\
Licences of the weights about to be downloaded:
  * FLUX.1-dev (black-forest-labs/FLUX.1-dev): FLUX.1 [dev] Non-Commercial License.
    The repository is gated: accept its terms on huggingface.co and log in (`hf auth login`).
  * insightface antelopev2 (SCRFD, glintr100): non-commercial research use only.
  * PuLID weights (guozinan/PuLID): the PuLID code is Apache-2.0; its maintainers state that
    FLUX.1-dev and the insightface models are not for commercial use.
  * EVA02-CLIP (MIT), facexlib BiSeNet (see facexlib).
Re-run with --accept-licence to confirm that your use complies with these licences."""

FLUX_SUBFOLDERS = (
    "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae",
)  # fmt: skip
FIRST_MIB = 1 << 20


class MissingWeightsError(FileNotFoundError):
    """A weight file or folder is absent; the message names it and the fix."""


class LicenceNotAccepted(RuntimeError):
    """``download`` was called without the licence acknowledgement."""


@dataclass(frozen=True)
class Asset:
    """One weight file (``filename``) or a repository snapshot folder (``filename`` None)."""

    role: str
    local: str
    repo_id: str | None = None
    filename: str | None = None
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    patterns: tuple[str, ...] = ()
    #: When set, the asset is optional: its absence is a warning (this text), not a start-up error.
    fallback: str | None = None


@dataclass(frozen=True)
class PresetConfig:
    """A named set of weights (data only; :mod:`engine.presets` builds models from it)."""

    name: str
    assets: tuple[Asset, ...] = field(default_factory=tuple)
    tiny: bool = False

    def asset(self, role: str) -> Asset:
        for a in self.assets:
            if a.role == role:
                return a
        raise KeyError(f"preset {self.name} has no {role} weights")


#: Sizes in bytes as listed by a public model checker; hashes: fill in when published values
#: are known (nothing here is guessed; an empty entry means "not pinned").
KNOWN_SIZES = {
    "EVA02_CLIP_L_336_psz14_s6B.pt": 856_461_210,
    "antelopev2/scrfd_10g_bnkps.onnx": 16_923_827,
    "antelopev2/glintr100.onnx": 260_665_334,
    "parsing_bisenet.pth": 53_289_463,
}
KNOWN_SHA256: dict[str, str] = {}

EVA_SOURCES = {
    "eva-clip": ("QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt"),
    "timm": ("timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k", "open_clip_model.safetensors"),
}
BISENET_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
#: The roles whose files make an identity embedding, in the order the fingerprint hashes them.
FINGERPRINT_ROLES = ("pulid", "eva", "arcface")
HAAR_FALLBACK = (
    "the lower-quality Haar fallback detector will be used (OpenCV, no download); "
    "run `pulid-bot models download` for SCRFD"
)


def _file(role: str, local: str, repo: str | None, name: str | None, **kw) -> Asset:
    return Asset(
        role, local, repo, name, size=KNOWN_SIZES.get(local), sha256=KNOWN_SHA256.get(local), **kw
    )


def flux_dev_preset(pulid_version: str = "v0.9.1", eva_source: str = "eva-clip") -> PresetConfig:
    """FLUX.1-dev + PuLID-FLUX + EVA02-CLIP-L-336 + antelopev2 + BiSeNet."""
    if pulid_version not in ("v0.9.1", "v0.9.0"):
        raise ValueError(f"pulid_version {pulid_version!r}: choose v0.9.1 or v0.9.0")
    if eva_source not in EVA_SOURCES:
        raise ValueError(f"eva_source {eva_source!r}: choose one of {', '.join(EVA_SOURCES)}")
    eva_repo, eva_file = EVA_SOURCES[eva_source]
    pulid = f"pulid_flux_{pulid_version}.safetensors"
    return PresetConfig("flux-dev", (
        Asset("flux", "FLUX.1-dev", "black-forest-labs/FLUX.1-dev",
              patterns=("model_index.json", *(f"{s}/*" for s in FLUX_SUBFOLDERS))),
        _file("pulid", pulid, "guozinan/PuLID", pulid),
        _file("eva", eva_file, eva_repo, eva_file),
        _file("detector", "antelopev2/scrfd_10g_bnkps.onnx", "DIAMONIK7777/antelopev2",
              "scrfd_10g_bnkps.onnx", fallback=HAAR_FALLBACK),
        _file("arcface", "antelopev2/glintr100.onnx", "DIAMONIK7777/antelopev2", "glintr100.onnx"),
        _file("parser", "parsing_bisenet.pth", None, None, url=BISENET_URL),
    ))  # fmt: skip


TINY_PRESET = PresetConfig("tiny", (), tiny=True)


# --- fingerprint ----------------------------------------------------------------------------


def file_identity(path: Path) -> str:
    """``size:sha256(first MiB, last MiB)`` of a file's contents: cheap, and the same whatever
    the file or its folder is called (a symlink counts as the file it points to)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        digest.update(stream.read(FIRST_MIB))
        if size > FIRST_MIB:
            stream.seek(max(FIRST_MIB, size - FIRST_MIB))
            digest.update(stream.read(FIRST_MIB))
    return f"{size}:{digest.hexdigest()}"


def fingerprint(preset: str, parts: Iterable[str]) -> str:
    """``preset:hash`` over the preset name and the weight identities, in the given order."""
    digest = hashlib.sha256(preset.encode())
    for part in parts:
        digest.update(b"\0" + part.encode())
    return f"{preset}:{digest.hexdigest()[:32]}"


def preset_fingerprint(preset: PresetConfig, model_dir: Path) -> str:
    """Fingerprint of the identity-making weights (PuLID, EVA, ArcFace) of a real preset.

    Only the files' contents count, role by role in :data:`FINGERPRINT_ROLES` order: the same
    weights under another model folder (``./models`` here, ``/models`` in a container) or
    another file name give the same fingerprint.
    """
    assets = [preset.asset(role) for role in FINGERPRINT_ROLES]
    return fingerprint(
        preset.name, (f"{a.role}={file_identity(local_path(a, model_dir))}" for a in assets)
    )


def tiny_fingerprint(seed: int, spec: dict[str, object]) -> str:
    return fingerprint(
        "tiny", [json.dumps({"seed": seed, "spec": spec}, sort_keys=True, default=str)]
    )


# --- resolve and check ----------------------------------------------------------------------


def local_path(asset: Asset, model_dir: Path) -> Path:
    """Where ``asset`` lives inside the model folder, or :class:`MissingWeightsError`."""
    path = Path(model_dir) / asset.local
    present = path.is_dir() if asset.filename is None and asset.url is None else path.is_file()
    if not present:
        raise MissingWeightsError(
            f"{asset.role} weights missing: {path}; run `pulid-bot models download`"
        )
    return path


def check(preset: PresetConfig, model_dir: Path, *, hashes: bool = False) -> list[str]:
    """One line per missing or mismatched file; empty when the set is complete.

    A missing optional file (one with a ``fallback``) is listed too, as a warning that says what
    replaces it.
    """
    problems: list[str] = []
    for asset in preset.assets:
        if (missing := _absence(asset, model_dir)) is not None:
            problems.append(str(missing) if asset.fallback is None else _warning(asset, model_dir))
        else:
            problems += _check_asset(asset, local_path(asset, model_dir), hashes)
    return problems


def require(preset: PresetConfig, model_dir: Path) -> None:
    """Raise :class:`MissingWeightsError` (the first missing file and a count) unless every
    required file is present; optional files (with a ``fallback``) may be absent."""
    missing = [
        exc
        for asset in preset.assets
        if asset.fallback is None and (exc := _absence(asset, model_dir)) is not None
    ]
    if len(missing) > 1:
        raise MissingWeightsError(
            f"{missing[0]} (and {len(missing) - 1} more: `pulid-bot models check` lists them)"
        )
    if missing:
        raise missing[0]


def _absence(asset: Asset, model_dir: Path) -> MissingWeightsError | None:
    try:
        local_path(asset, model_dir)
    except MissingWeightsError as exc:
        return exc
    return None


def _warning(asset: Asset, model_dir: Path) -> str:
    path = Path(model_dir) / asset.local
    return f"warning: {asset.role} weights missing: {path}; {asset.fallback}"


def _check_asset(asset: Asset, path: Path, hashes: bool) -> list[str]:
    if asset.role == "flux":
        return _check_flux(path)
    size = path.stat().st_size
    if asset.size is not None and size != asset.size:
        return [f"{asset.local} is {size} bytes, expected {asset.size} (incomplete or other file)"]
    if hashes and asset.sha256 and _sha256(path) != asset.sha256:
        return [f"{asset.local} sha256 differs from the pinned value"]
    if asset.role == "pulid":
        return _check_pulid(path)
    return []


def _check_flux(path: Path) -> list[str]:
    problems = [] if (path / "model_index.json").is_file() else [f"{path}/model_index.json missing"]
    for sub in FLUX_SUBFOLDERS:
        folder = path / sub
        if not folder.is_dir() or not any(folder.iterdir()):
            problems.append(f"FLUX.1-dev component {sub}/ missing in {path}")
    return problems


def _check_pulid(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    from engine.pulid import official_shapes

    want = official_shapes()
    try:
        with safe_open(str(path), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        return [f"{path.name} is not a readable safetensors file ({exc})"]
    bad = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if bad:
        return [f"{path.name}: {len(bad)} keys missing or mis-shaped, e.g. {bad[0]}"]
    return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(16 * FIRST_MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- download -------------------------------------------------------------------------------


def download(
    preset: PresetConfig,
    model_dir: Path,
    cache_dir: Path | None = None,
    *,
    accept_licence: bool = False,
    say: Callable[[str], None] = log.info,
) -> list[Path]:
    """Fetch every asset (resumable) and link it into ``model_dir``; returns the local paths."""
    if preset.tiny:
        say("the tiny preset is built in code: nothing to download")
        return []
    say(LICENCE_NOTICE)
    if not accept_licence:
        raise LicenceNotAccepted("licences not accepted: re-run with --accept-licence")
    model_dir.mkdir(parents=True, exist_ok=True)
    return [_fetch(asset, Path(model_dir), cache_dir, say) for asset in preset.assets]


def _fetch(asset: Asset, model_dir: Path, cache_dir: Path | None, say) -> Path:
    target = model_dir / asset.local
    say(f"fetching {asset.role}: {asset.local}")
    if asset.url is not None:
        return fetch_url(asset.url, target)
    from huggingface_hub import hf_hub_download, snapshot_download

    if asset.filename is None:
        source = snapshot_download(
            asset.repo_id, cache_dir=cache_dir, allow_patterns=list(asset.patterns)
        )
    else:
        source = hf_hub_download(asset.repo_id, asset.filename, cache_dir=cache_dir)
    return _link(Path(source), target)


def _link(source: Path, target: Path) -> Path:
    """Point ``target`` at the cached ``source`` (a symlink; a copy where links fail)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    try:
        target.symlink_to(source.resolve() if source.is_file() else source, source.is_dir())
    except OSError:
        copy = shutil.copytree if source.is_dir() else shutil.copyfile
        copy(source, target)
    return target


def fetch_url(url: str, target: Path, chunk: int = FIRST_MIB) -> Path:
    """Download ``url`` to ``target``, resuming ``target.part`` with a Range request."""
    if target.is_file():
        return target
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        mode = "ab" if done and response.status == 206 else "wb"
        with open(part, mode) as out:
            while block := response.read(chunk):
                out.write(block)
    os.replace(part, target)
    return target
