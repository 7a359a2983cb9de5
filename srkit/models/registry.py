"""Explicit architecture registry (no folder scanning) and detection from a state dict."""

from __future__ import annotations

from srkit.errors import UnsupportedModelError
from srkit.models import edsr, espcn, fsrcnn, rcan, rdn, realcugan, rrdbnet, srcnn, srresnet, srvgg, vdsr, waifu2x
from srkit.models.base import ArchSpec, Params, StateDict

_SPECS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _SPECS:
        raise ValueError(f"architecture {spec.name!r} registered twice")
    _SPECS[spec.name] = spec
    return spec


for _module in (espcn, srcnn, fsrcnn, vdsr, srresnet, edsr, rdn, rcan, rrdbnet, srvgg):
    register(_module.SPEC)
for _module in (waifu2x, realcugan):  # the ncnn tools' networks (also as .pth in their public layouts)
    register(_module.SPEC)

# the architectures of the community model database (chaiNNer / spandrel key layouts)
from srkit.models import dat, hat, omnisr, plksr, safmn, span, swinir  # noqa: E402

for _module in (span, plksr, safmn, omnisr, swinir, hat, dat):
    register(_module.SPEC)


def names() -> list[str]:
    return sorted(_SPECS)


def get(name: str) -> ArchSpec:
    try:
        return _SPECS[name.lower()]
    except KeyError:
        raise UnsupportedModelError(
            f"unknown architecture {name!r}; supported: {', '.join(names())}"
        ) from None


def detect(sd: StateDict) -> tuple[ArchSpec, Params]:
    """The architecture and hyperparameters a state dict implies. Raises UnsupportedModelError if none fits."""
    matches = [(spec, params) for spec in _SPECS.values() if (params := spec.detect(sd)) is not None]
    if not matches:
        sample = ", ".join(list(sd)[:4])
        raise UnsupportedModelError(
            f"the weights match no supported architecture (first keys: {sample}); "
            f"supported: {', '.join(names())}"
        )
    if len(matches) > 1:
        found = ", ".join(spec.name for spec, _ in matches)
        raise UnsupportedModelError(f"the weights fit several architectures ({found}); pass --arch")
    return matches[0]
