"""PuLID weights: official layout and counts, config inference, strict loading with named errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from pulid_support import attach
from safetensors.torch import save_file

from engine import pulid_weights
from engine.pulid import (
    CA_KEY_COUNT,
    CA_PARAM_COUNT,
    ENCODER_KEY_COUNT,
    ENCODER_PARAM_COUNT,
    OFFICIAL_CA_CONFIG,
    OFFICIAL_ENCODER_CONFIG,
    TOTAL_KEY_COUNT,
    PulidAdapter,
    PulidWeightsError,
    load_pulid_state_dict,
    official_shapes,
    random_pulid_state_dict,
)

try:
    from .reference import twin
except ImportError:
    from reference import twin


def _numel(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))


def test_official_layout_counts() -> None:
    shapes = official_shapes()
    assert len(shapes) == TOTAL_KEY_COUNT == 312
    assert sum(k.startswith("pulid_encoder.") for k in shapes) == ENCODER_KEY_COUNT == 172
    assert sum(k.startswith("pulid_ca.") for k in shapes) == CA_KEY_COUNT == 140
    assert _numel(shapes, "pulid_encoder.") == ENCODER_PARAM_COUNT == 151_398_400
    assert _numel(shapes, "pulid_ca.") == CA_PARAM_COUNT == 419_635_200


def test_official_layout_shapes_match_spec_table() -> None:
    shapes = official_shapes()
    assert shapes["pulid_encoder.latents"] == (1, 32, 1024)
    assert shapes["pulid_encoder.proj_out"] == (1024, 2048)
    assert shapes["pulid_encoder.id_embedding_mapping.0.weight"] == (1024, 1280)
    assert shapes["pulid_encoder.id_embedding_mapping.6.weight"] == (5120, 1024)
    assert shapes["pulid_encoder.mapping_4.6.bias"] == (1024,)
    assert shapes["pulid_encoder.layers.9.0.to_kv.weight"] == (2048, 1024)
    assert shapes["pulid_encoder.layers.9.1.1.weight"] == (4096, 1024)
    assert shapes["pulid_encoder.layers.9.1.3.weight"] == (1024, 4096)
    assert shapes["pulid_ca.19.to_q.weight"] == (2048, 3072)
    assert shapes["pulid_ca.19.to_kv.weight"] == (4096, 2048)
    assert shapes["pulid_ca.19.to_out.weight"] == (3072, 2048)
    assert shapes["pulid_ca.0.norm1.weight"] == (2048,) and shapes["pulid_ca.0.norm2.bias"] == (
        3072,
    )


def test_full_size_random_state_dict_on_meta_has_official_counts() -> None:
    state = random_pulid_state_dict(device="meta")
    assert all(t.is_meta for t in state.values())
    assert {k: tuple(v.shape) for k, v in state.items()} == official_shapes()
    assert sum(t.numel() for t in state.values()) == ENCODER_PARAM_COUNT + CA_PARAM_COUNT


def test_attach_infers_official_config_on_meta() -> None:
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # FLUX.1-dev shapes
    adapter = PulidAdapter.attach(transformer, random_pulid_state_dict(device="meta"))
    assert adapter.encoder.config == OFFICIAL_ENCODER_CONFIG
    assert len(adapter.pulid_ca) == 20
    assert all(ca.config == OFFICIAL_CA_CONFIG for ca in adapter.pulid_ca)
    kinds = [(kind, i) for kind, i, _ in adapter.hooked_blocks]
    assert kinds == [("double", i) for i in range(0, 19, 2)] + [
        ("single", j) for j in range(0, 38, 4)
    ]
    assert [k for *_, k in adapter.hooked_blocks] == list(range(20))
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == official_shapes()


@pytest.fixture(scope="module")
def tiny() -> twin.Twin:
    return twin.build_twin()


def test_tiny_state_dict_loads_strictly_and_round_trips(tiny: twin.Twin) -> None:
    state = twin.tiny_pulid_state_dict()
    adapter = attach(tiny.transformer, state)
    loaded = adapter.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert adapter.encoder.config.depth == 5 and adapter.encoder.config.num_queries == 8
    assert adapter.pulid_ca[0].config.dim_head == 32 and len(adapter.pulid_ca) == 4


def test_seeded_random_weights_are_reproducible() -> None:
    a, b = twin.tiny_pulid_state_dict(seed=5), twin.tiny_pulid_state_dict(seed=5)
    c = twin.tiny_pulid_state_dict(seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pulid_ca.0.to_q.weight"], c["pulid_ca.0.to_q.weight"])


def test_build_state_dict_tiny_matches_transformer(tiny: twin.Twin) -> None:
    state = PulidAdapter.build_state_dict_tiny(tiny.transformer, vit_dim=48, id_in_dim=560)
    adapter = attach(tiny.transformer, state)
    assert adapter.encoder.config.vit_dim == 48 and adapter.encoder.config.id_in_dim == 560


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("pulid_ca.2.to_kv.weight"), "missing key(s): pulid_ca.2.to_kv.weight"),
        (lambda s: s.pop("pulid_encoder.latents"), "missing key pulid_encoder.latents"),
        (
            lambda s: s.update({"pulid_ca.4.norm1.weight": torch.ones(64)}),
            "unexpected key(s): pulid_ca.4.norm1.weight",
        ),
        (
            lambda s: s.update({"pulid_encoder.extra": torch.ones(1)}),
            "unexpected key(s): pulid_encoder.extra",
        ),
        (
            lambda s: s.update({"pulid_ca.1.to_out.weight": torch.ones(128, 65)}),
            "mis-shaped key(s): pulid_ca.1.to_out.weight (128, 65) (expected (128, 64))",
        ),
        (
            lambda s: s.update({"pulid_encoder.layers.2.1.0.bias": torch.ones(3)}),
            "mis-shaped key(s): pulid_encoder.layers.2.1.0.bias",
        ),
        (
            lambda s: s.update({"pulid_encoder.layers.5.0.norm1.weight": torch.ones(64)}),
            "IDFormer depth 6",
        ),
    ],
)
def test_wrong_layouts_are_refused_naming_the_key(tiny: twin.Twin, edit, message: str) -> None:
    state = twin.tiny_pulid_state_dict()
    edit(state)
    with pytest.raises(PulidWeightsError) as info:
        attach(tiny.transformer, state)
    assert message in str(info.value)


def test_ca_width_must_match_transformer(tiny: twin.Twin) -> None:
    state = random_pulid_state_dict(**{**twin.TINY_PULID, "ca_dim": 96})
    with pytest.raises(PulidWeightsError, match=r"pulid_ca\.0\.norm2\.weight \(96,\)"):
        attach(tiny.transformer, state)


def test_renamed_prefix_is_refused(tiny: twin.Twin) -> None:
    state = {f"pulid.{k}": v for k, v in twin.tiny_pulid_state_dict().items()}
    with pytest.raises(PulidWeightsError, match="missing key pulid_encoder.latents"):
        attach(tiny.transformer, state)


def test_heads_must_divide_widths(tiny: twin.Twin) -> None:
    with pytest.raises(PulidWeightsError, match="not divisible by 3 heads"):
        PulidAdapter.attach(tiny.transformer, twin.tiny_pulid_state_dict(), encoder_heads=3)


def test_attach_refuses_non_flux_module() -> None:
    with pytest.raises(TypeError, match="FluxTransformer2DModel"):
        PulidAdapter.attach(torch.nn.Linear(2, 2), twin.tiny_pulid_state_dict())


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_load_file_with_official_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = twin.tiny_pulid_state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    monkeypatch.setattr(pulid_weights, "official_shapes", lambda: expected)  # 1 GB file otherwise
    loaded = load_pulid_state_dict(_save(tmp_path / "pulid_flux_v0.9.1.safetensors", state))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_file_refuses_non_official_layout(tmp_path: Path) -> None:
    path = _save(tmp_path / "pulid.safetensors", twin.tiny_pulid_state_dict())
    with pytest.raises(PulidWeightsError, match=r"mis-shaped key\(s\): pulid_ca\.0\.norm1\.bias"):
        load_pulid_state_dict(path)
    renamed = {f"model.{k}": v for k, v in twin.tiny_pulid_state_dict().items()}
    path = _save(tmp_path / "renamed.safetensors", renamed)
    with pytest.raises(PulidWeightsError, match=r"unexpected key\(s\): model\.pulid_ca"):
        load_pulid_state_dict(path)


def test_load_file_refuses_wrong_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(PulidWeightsError, match="must be a .safetensors file"):
        load_pulid_state_dict(tmp_path / "pulid_v1.bin")
    with pytest.raises(PulidWeightsError, match="not found"):
        load_pulid_state_dict(tmp_path / "absent.safetensors")
