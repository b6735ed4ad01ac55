"""Weights of a preset: check (missing, size, PuLID layout), download, fingerprints, the CLI."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine import models
from engine.__main__ import main as engine_main
from engine.presets import load_engine


def _touch(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_check_names_every_missing_file(tmp_path) -> None:
    problems = models.check(models.flux_dev_preset(), tmp_path)
    assert len(problems) == 6
    for name in ("FLUX.1-dev", "pulid_flux_v0.9.1.safetensors", "EVA02_CLIP_L_336_psz14_s6B.pt",
                 "antelopev2/glintr100.onnx", "antelopev2/scrfd_10g_bnkps.onnx",
                 "parsing_bisenet.pth"):  # fmt: skip
        assert sum(name in line for line in problems) == 1, name
    v090 = models.check(models.flux_dev_preset("v0.9.0", eva_source="timm"), tmp_path)
    assert any("pulid_flux_v0.9.0.safetensors" in line for line in v090)
    assert any("open_clip_model.safetensors" in line for line in v090)
    with pytest.raises(ValueError, match="pulid_version"):
        models.flux_dev_preset("v1.1")


def test_check_reports_size_and_layout_mismatches(tmp_path) -> None:
    preset = models.flux_dev_preset()
    flux = tmp_path / "FLUX.1-dev"
    _touch(flux / "model_index.json")
    for sub in models.FLUX_SUBFOLDERS[:-1]:  # no vae/
        _touch(flux / sub / "config.json")
    _touch(tmp_path / "antelopev2" / "glintr100.onnx", 1000)
    save_file({"pulid_ca.0.to_q.weight": torch.zeros(2, 2)}, tmp_path / preset.asset("pulid").local)
    problems = models.check(preset, tmp_path)
    assert any("component vae/ missing" in p for p in problems)
    assert any("glintr100.onnx is 1000 bytes, expected 260665334" in p for p in problems)
    assert any(
        "pulid_flux_v0.9.1.safetensors: 312 keys missing or mis-shaped" in p for p in problems
    )
    assert not any("model_index" in p for p in problems)


def test_missing_weights_are_a_clear_error_at_load(tmp_path) -> None:
    with pytest.raises(models.MissingWeightsError) as info:
        load_engine("flux-dev", model_dir=tmp_path)
    message = str(info.value)
    assert "FLUX.1-dev" in message and "pulid-bot models download" in message
    assert "(and 4 more: `pulid-bot models check` lists them)" in message  # detector optional
    assert "\n" not in message
    listed = models.check(models.flux_dev_preset(), tmp_path)
    assert any("pulid_flux_v0.9.1.safetensors" in p for p in listed)
    assert any("glintr100.onnx" in p for p in listed)


def _complete_set(root: Path, preset: models.PresetConfig, *, skip: tuple[str, ...] = ()) -> Path:
    for asset in preset.assets:
        if asset.role in skip:
            continue
        path = root / asset.local
        path.mkdir(parents=True) if asset.role == "flux" else _touch(path)
    return root


def test_a_missing_detector_is_a_warning_naming_the_haar_fallback(tmp_path) -> None:
    preset = models.flux_dev_preset()
    root = _complete_set(tmp_path, preset, skip=("detector",))
    models.require(preset, root)  # starts: the Haar detector stands in for SCRFD
    (detector_line,) = [p for p in models.check(preset, root) if "scrfd" in p]
    assert detector_line.startswith("warning: detector weights missing")
    assert "Haar fallback detector will be used" in detector_line
    assert any("pulid_flux_v0.9.1.safetensors is not a readable safetensors" in p
               for p in models.check(preset, root))  # fmt: skip
    (root / preset.asset("arcface").local).unlink()
    with pytest.raises(models.MissingWeightsError, match="arcface weights missing.*glintr100"):
        models.require(preset, root)  # glintr100 makes the identity: no fallback


def test_eva_source_picks_the_required_eva_file(tmp_path) -> None:
    timm = models.flux_dev_preset(eva_source="timm")
    root = _complete_set(tmp_path, models.flux_dev_preset())
    with pytest.raises(models.MissingWeightsError, match="open_clip_model.safetensors"):
        load_engine("flux-dev", model_dir=root, eva_source="timm")
    _touch(root / timm.asset("eva").local)
    models.require(timm, root)


def _weights(root: Path, preset: models.PresetConfig, contents: dict[str, bytes]) -> Path:
    for role, data in contents.items():
        path = root / preset.asset(role).local
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_fingerprint_depends_on_the_weight_contents_only(tmp_path) -> None:
    preset = models.flux_dev_preset()
    size = 2 * models.FIRST_MIB + 300
    contents = {role: bytes([i]) * size for i, role in enumerate(models.FINGERPRINT_ROLES)}
    here = _weights(tmp_path / "work" / "models", preset, contents)
    first = models.preset_fingerprint(preset, here)
    assert first.startswith("flux-dev:") and len(first) == len("flux-dev:") + 32
    there = _weights(tmp_path / "container" / "weights", preset, contents)
    assert models.preset_fingerprint(preset, there) == first  # other folder name and place
    linked = tmp_path / "linked"
    for role in models.FINGERPRINT_ROLES:
        target = linked / preset.asset(role).local
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(here / preset.asset(role).local)
    assert models.preset_fingerprint(preset, linked) == first
    tail = {**contents, "arcface": contents["arcface"][:-1] + b"\xff"}  # only the last MiB
    assert models.preset_fingerprint(preset, _weights(tmp_path / "b", preset, tail)) != first
    swapped = {**contents, "pulid": contents["eva"], "eva": contents["pulid"]}  # role order
    assert models.preset_fingerprint(preset, _weights(tmp_path / "c", preset, swapped)) != first
    assert models.tiny_fingerprint(0, {"a": 1}) != models.tiny_fingerprint(1, {"a": 1})


def test_download_requires_the_licence_acknowledgement(tmp_path) -> None:
    said: list[str] = []
    with pytest.raises(models.LicenceNotAccepted, match="--accept-licence"):
        models.download(models.flux_dev_preset(), tmp_path, say=said.append)
    assert "Non-Commercial" in said[0] and "insightface" in said[0]
    assert models.download(models.TINY_PRESET, tmp_path) == []


def test_download_links_hub_files_into_the_model_folder(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    cache = tmp_path / "cache"

    def fake_file(repo_id, filename, cache_dir=None):
        return _touch(cache / repo_id / filename, 64)

    def fake_snapshot(repo_id, cache_dir=None, allow_patterns=None):
        assert "transformer/*" in allow_patterns and "model_index.json" in allow_patterns
        _touch(cache / repo_id / "model_index.json")
        return cache / repo_id

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(models, "fetch_url", lambda url, target: _touch(target, 32))
    paths = models.download(models.flux_dev_preset(), tmp_path / "m", cache, accept_licence=True)
    assert (tmp_path / "m" / "FLUX.1-dev" / "model_index.json").is_file()
    linked = tmp_path / "m" / "antelopev2" / "glintr100.onnx"
    assert linked.is_symlink() and linked.resolve() == (
        cache / "DIAMONIK7777/antelopev2/glintr100.onnx"
    )
    assert len(paths) == 6 and all(p.exists() for p in paths)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    body = bytes(range(256)) * 40

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args) -> None:
        pass


def test_fetch_url_resumes_a_partial_download(tmp_path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = tmp_path / "parsing_bisenet.pth"
        (tmp_path / "parsing_bisenet.pth.part").write_bytes(_RangeHandler.body[:1000])
        url = f"http://127.0.0.1:{server.server_port}/parsing_bisenet.pth"
        models.fetch_url(url, target, chunk=4096)
    finally:
        server.shutdown()
    assert target.read_bytes() == _RangeHandler.body
    assert not (tmp_path / "parsing_bisenet.pth.part").exists()


def test_cli_models_check(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PULID_BOT__ENGINE__PRESET", "flux-dev")
    monkeypatch.setenv("PULID_BOT__ENGINE__MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("PULID_BOT_CONFIG", raising=False)
    assert engine_main(["models", "check"]) == 1
    out = capsys.readouterr().out
    assert "6 problem(s)" in out and "glintr100.onnx" in out
    assert "Haar fallback" in out and "EVA02_CLIP_L_336_psz14_s6B.pt" in out
    monkeypatch.setenv("PULID_BOT__ENGINE__EVA_SOURCE", "timm")
    assert engine_main(["models", "check"]) == 1
    out = capsys.readouterr().out
    assert "open_clip_model.safetensors" in out and "EVA02_CLIP" not in out
    assert engine_main(["models", "download"]) == 2  # no --accept-licence
    monkeypatch.setenv("PULID_BOT__ENGINE__PRESET", "tiny")
    assert engine_main(["models", "check"]) == 0
