"""The architecture descriptor carries its facts, the export writes them, and the runtime and tools read them
from the model's metadata (with a fallback for models exported before the keys existed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from srkit.meta import Color, ModelInfo, feature_width, judged_by_parity, read_model_info, tiling_is_exact
from srkit.runtime import tiling

torch = pytest.importorskip("torch", reason="the descriptors build PyTorch modules")

from srkit.models import registry  # noqa: E402


def _info(arch: str, **extra: str) -> ModelInfo:
    return ModelInfo(arch=arch, scale=4, in_channels=3, color=Color.RGB, params={"num_feat": 48}, extra=extra)


@pytest.mark.parametrize("name", registry.names())
def test_every_architecture_states_its_facts(name: str) -> None:
    spec = registry.get(name)
    params = {**spec.defaults, "scale": spec.scales[-1]}
    facts = spec.facts(params)
    assert set(facts) == {"features", "tiling", "gan_trained", "fp16_safe"}
    assert int(facts["features"]) > 0 and spec.size_multiple(params) >= 1
    # the descriptor's width is the network's: the first convolution's output channels at the defaults
    module = spec.build(params)
    first_conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert spec.feature_width(params) == first_conv.out_channels


def test_descriptor_flags_where_they_matter() -> None:
    assert registry.get("rcan").global_context and not registry.get("edsr").global_context
    assert registry.get("rrdbnet").gan_trained and registry.get("srvgg").gan_trained
    assert not registry.get("espcn").gan_trained
    assert not registry.get("rrdbnet").fp16_safe  # Real-ESRGAN's reported fp16 NaN


def test_size_multiple_follows_the_weights() -> None:
    """Real-ESRGAN x2 / x1 start with a pixel-unshuffle: the multiple comes from the detected scale."""
    spec = registry.get("rrdbnet")
    tiny = {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}
    for scale, multiple in {1: 4, 2: 2, 4: 1}.items():
        weights = spec.build({**tiny, "scale": scale}).state_dict()
        detected_spec, params = registry.detect(weights)
        assert detected_spec is spec and spec.size_multiple(params) == multiple


def test_export_writes_the_facts(espcn_x3_onnx: Path) -> None:
    info = read_model_info(espcn_x3_onnx)
    assert info.extra["features"] == "64" and info.extra["tiling"] == "exact"
    assert info.extra["gan_trained"] == "false" and info.extra["fp16_safe"] == "true"
    assert feature_width(info) == 64 and tiling.features_of(info) == 64
    assert tiling_is_exact(info) and not judged_by_parity(info)


def test_recorded_facts_win_over_the_architecture_name() -> None:
    assert judged_by_parity(_info("espcn", gan_trained="true"))
    assert not judged_by_parity(_info("rrdbnet", gan_trained="false"))
    assert not tiling_is_exact(_info("edsr", tiling="approximate"))
    assert tiling.features_of(_info("rrdbnet", features="32")) == 32


def test_models_exported_before_the_keys() -> None:
    assert judged_by_parity(_info("rrdbnet")) and judged_by_parity(_info("srvgg"))
    assert not judged_by_parity(_info("edsr"))
    assert not tiling_is_exact(_info("rcan")) and tiling_is_exact(_info("rdn"))
    assert feature_width(_info("edsr")) is None
    assert tiling.features_of(_info("edsr")) == 48  # BasicSR's num_feat from the params
    no_width = ModelInfo(arch="espcn", scale=3, in_channels=1, color=Color.Y, params={"feat2": 32})
    assert tiling.features_of(no_width) == tiling.DEFAULT_FEATURES


def test_tiling_a_global_model_warns() -> None:
    with pytest.warns(tiling.ApproximateTilingWarning, match="rcan: tiled output approximates"):
        tiling.warn_if_approximate(_info("rcan", tiling="approximate"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiling.warn_if_approximate(_info("edsr", tiling="exact"))
    assert tiling.approximation_note(_info("edsr")) is None
