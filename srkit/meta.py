"""ModelInfo: the self-description srkit writes into ONNX `metadata_props` (keys prefixed `srkit.`).

The runtime reads these and never guesses the scale or colour space from tensor shapes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from srkit.errors import InputError, UnsupportedModelError

PREFIX = "srkit."


# what a reduced precision of a PSNR-trained model may cost against ground truth (issue 6's budget)
DEFAULT_MAX_PSNR_DROP_DB = 0.3


class Color(str, Enum):
    RGB = "rgb"
    Y = "y"  # luma of BT.601 YCbCr; chroma is upscaled bicubically by the runtime


class Io(str, Enum):
    """What a model file takes and returns (`srkit.io`)."""

    TENSOR = "tensor"  # float32 NCHW in 0-1; the host converts colour, pads and rounds (srkit.runtime.Upscaler)
    RGB8 = "rgb8"  # uint8 [N,H,W,3] RGB in and out: a pipeline model (srkit.pipeline)
    GRAY8 = "gray8"  # uint8 [N,H,W,1]
    RGB16 = "rgb16"  # uint16 [N,H,W,3]
    Y8 = "y8"  # uint8 [N,H,W,1] BT.601 luma (a video's Y plane), Y-channel models only

    @classmethod
    def parse(cls, value: str | Io) -> Io:
        try:
            return cls(str(value.value if isinstance(value, Io) else value).lower())
        except ValueError:
            raise InputError(f"unknown --io {value!r}; choose one of: {', '.join(i.value for i in cls)}") from None

    @property
    def is_pipeline(self) -> bool:
        return self != Io.TENSOR


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(str(value.value if isinstance(value, Precision) else value).lower())
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise InputError(f"unknown precision {value!r}; choose one of: {choices}") from None


@dataclass
class ModelInfo:
    arch: str
    scale: int
    in_channels: int
    color: Color
    range: str = "0-1"
    size_multiple: int = 1
    precision: Precision = Precision.FP32
    opset: int = 17
    source: str = ""
    source_sha256: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    receptive_field: int = 8
    parity: dict[str, Any] = field(default_factory=dict)
    static_shape: tuple[int, int] | None = None  # (H, W) of the input when exported with --static
    version: str = ""
    io: Io = Io.TENSOR
    extra: dict[str, str] = field(default_factory=dict)  # later passes (fp16, int8) record facts here

    # ---- ONNX metadata_props <-> ModelInfo -------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        props = {
            "arch": self.arch,
            "scale": str(self.scale),
            "in_channels": str(self.in_channels),
            "color": self.color.value,
            "range": self.range,
            "size_multiple": str(self.size_multiple),
            "precision": self.precision.value,
            "opset": str(self.opset),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "params": json.dumps(self.params, sort_keys=True),
            "receptive_field": str(self.receptive_field),
            "parity": json.dumps(self.parity, sort_keys=True),
            "version": self.version,
            "io": self.io.value,
        }
        if self.static_shape:
            props["static_shape"] = f"{self.static_shape[0]}x{self.static_shape[1]}"
        props.update(self.extra)
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], *, where: str = "model") -> ModelInfo:
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [k for k in ("arch", "scale", "in_channels", "color") if k not in ours]
        if missing:
            raise UnsupportedModelError(
                f"{where} has no srkit metadata ({', '.join(PREFIX + k for k in missing)} missing); "
                "export it with `srkit export` first"
            )
        try:
            static = ours.pop("static_shape", "")
            info = cls(
                arch=ours.pop("arch"),
                scale=int(ours.pop("scale")),
                in_channels=int(ours.pop("in_channels")),
                color=Color(ours.pop("color")),
                range=ours.pop("range", "0-1"),
                size_multiple=int(ours.pop("size_multiple", "1")),
                precision=Precision(ours.pop("precision", "fp32")),
                opset=int(ours.pop("opset", "17")),
                source=ours.pop("source", ""),
                source_sha256=ours.pop("source_sha256", ""),
                params=json.loads(ours.pop("params", "{}") or "{}"),
                receptive_field=int(ours.pop("receptive_field", "8")),
                parity=json.loads(ours.pop("parity", "{}") or "{}"),
                static_shape=_parse_hw(static) if static else None,
                version=ours.pop("version", ""),
                io=Io(ours.pop("io", "tensor")),
            )
        except (ValueError, KeyError) as exc:
            raise UnsupportedModelError(f"{where} has malformed srkit metadata: {exc}") from None
        info.extra = ours
        return info

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["color"] = self.color.value
        data["precision"] = self.precision.value
        data["io"] = self.io.value
        return data


# ---- facts the export records from the architecture's descriptor (srkit.models.base.ArchSpec.facts) ----
# Models exported before these keys existed: what their architecture's descriptor says today.
_LEGACY_GAN_TRAINED = frozenset({"rrdbnet", "srvgg"})
_LEGACY_APPROXIMATE_TILING = frozenset({"rcan"})


def judged_by_parity(info: ModelInfo) -> bool:
    """A GAN-trained model (Real-ESRGAN): its ground-truth PSNR is not the goal, so a reduced precision is
    judged by parity with fp32, not by the PSNR it loses (quantize budgets, bench recommendation)."""
    if "gan_trained" in info.extra:
        return info.extra["gan_trained"] == "true"
    return info.arch.lower() in _LEGACY_GAN_TRAINED


def tiling_is_exact(info: ModelInfo) -> bool:
    """False when an op sees the whole image (RCAN's channel attention): tiled output only approximates."""
    if "tiling" in info.extra:
        return info.extra["tiling"] != "approximate"
    return info.arch.lower() not in _LEGACY_APPROXIMATE_TILING


def feature_width(info: ModelInfo) -> int | None:
    """Feature maps at the network's widest point (srkit.features), None for models exported before."""
    value = info.extra.get("features")
    return int(value) if value and value.isdigit() else None


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def read_model_info(path: str | Path) -> ModelInfo:
    """Read ModelInfo from an ONNX file without loading its weights into memory twice (or from an ncnn
    `.param`: its srkit sidecar, else its graph; srkit.ncnn_meta)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    if path.suffix.lower() == ".param":
        from srkit.ncnn_meta import read_ncnn_info

        return read_ncnn_info(path)
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a core dependency
        from srkit._optional import require

        onnx = require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for a corrupt file
        raise InputError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    return ModelInfo.from_props(props, where=str(path))
