"""Architecture descriptors: what srkit must know about a network besides its weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from srkit.meta import Color
from srkit.models.util import StateDict

Params = dict[str, Any]


def no_size_multiple(params: Params) -> int:
    return 1


def num_feat(params: Params) -> int:
    """The width of BasicSR-style networks: `num_feat` feature maps in low-resolution space."""
    return int(params["num_feat"])


@dataclass(frozen=True)
class ConversionPiece:
    """One consecutive part of a network, converted on its own where a converter cannot take the whole graph.

    `inputs` and `outputs` name the values the piece takes and returns, in the order of its forward's arguments
    and of the tuple it returns. The first piece takes `IMAGE_IN`, the last returns `IMAGE_OUT`; every other value
    is returned by one piece and taken by exactly one later piece. `channels` gives each input's channel count
    and `stride` how much smaller than the image its height and width are (both for tracing).
    """

    module: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    channels: tuple[int, ...]
    stride: int = 1


IMAGE_IN, IMAGE_OUT = "image", "upscaled"


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture and the facts srkit must know about it (after spandrel's descriptor).

    `detect` looks at a state dict and returns the hyperparameters it implies (scale included when the
    weights determine it) or None when the keys do not belong to this architecture. The facts that depend on
    the hyperparameters (size multiple, feature width) are functions of them, so they follow the loaded
    weights; the export writes them all into the model's metadata (`facts`).
    """

    name: str
    title: str
    color: Color
    scales: tuple[int, ...]
    build: Callable[[Params], Any]
    detect: Callable[[StateDict], Params | None]
    # input sides must be a multiple of this (RRDBNet x2/x1 start with a pixel-unshuffle by 2/4)
    size_multiple: Callable[[Params], int] = no_size_multiple
    # feature maps at the widest point, in low-resolution space: what a tile's memory grows with
    feature_width: Callable[[Params], int] = num_feat
    # radius in low-resolution pixels that influences one output pixel; tiling overlaps at least this
    receptive_field: int = 8
    # an op that sees the whole image (RCAN's channel attention pools globally): tiling only approximates
    global_context: bool = False
    # usually trained with a GAN loss (Real-ESRGAN): ground-truth PSNR is not its goal, so a reduced
    # precision is judged by parity with fp32, not by the PSNR it loses
    gan_trained: bool = False
    # False where fp16 is known to overflow for some released weights: the fp16 export keeps a wider margin
    fp16_safe: bool = True
    # False when the weights do not tell the scale (e.g. SRCNN works at any scale it was trained for)
    scale_in_weights: bool = True
    defaults: Params = field(default_factory=dict)
    # (module, params) -> the pieces pnnx converts one by one when the whole network is beyond it (pnnx's
    # memory grows exponentially with RRDBNet's depth); None: converted whole
    conversion_pieces: Callable[[Any, Params], list[ConversionPiece]] | None = None

    def facts(self, params: Params) -> dict[str, str]:
        """What the export records in the model's metadata (srkit.<key>), for the runtime and the tools."""
        return {
            "features": str(self.feature_width(params)),
            "tiling": "approximate" if self.global_context else "exact",
            "gan_trained": "true" if self.gan_trained else "false",
            "fp16_safe": "true" if self.fp16_safe else "false",
        }
