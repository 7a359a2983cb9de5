"""Architecture descriptors: what srkit must know about a network besides its weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from srkit.meta import Color

StateDict = Mapping[str, Any]  # str -> torch.Tensor; kept loose so this module needs no torch
Params = dict[str, Any]


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture.

    `detect` looks at a state dict and returns the hyperparameters it implies (scale included when the
    weights determine it) or None when the keys do not belong to this architecture.
    """

    name: str
    title: str
    color: Color
    scales: tuple[int, ...]
    build: Callable[[Params], Any]
    detect: Callable[[StateDict], Params | None]
    size_multiple: int = 1
    # radius in low-resolution pixels that influences one output pixel; tiling overlaps at least this
    receptive_field: int = 8
    # True when some output pixels depend on the whole input (global pooling or channel attention over all
    # pixels, GroupNorm statistics): tiled output then approximates the untiled one whatever the overlap,
    # and receptive_field is only the tile overlap used
    global_context: bool = False
    # measured, not assumed (docs/architectures.md): False where fp16 inference is known or measured to
    # overflow or lose accuracy; srkit's fp16 export still keeps overflowing nodes in fp32 either way
    fp16_safe: bool = True
    # False when the weights do not tell the scale (e.g. SRCNN works at any scale it was trained for)
    scale_in_weights: bool = True
    defaults: Params = field(default_factory=dict)


def conv_shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    return tuple(value.shape) if value is not None else None
