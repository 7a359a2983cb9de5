"""The bundled models: weights trained by scripts/train_bundled.py, described in weights/zoo.json.

Reading the zoo needs no torch, so `srkit zoo` is instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from srkit.errors import InputError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    arch: str
    scale: int
    params: dict[str, Any]
    weights: Path
    parameters: int
    origin: str
    record: dict[str, Any]

    @property
    def psnr_gain_db(self) -> float | None:
        return self.record.get("validation", {}).get("gain_db")

    @property
    def test_gain_db(self) -> float | None:
        """The gain over bicubic on the test photos: no training run and no choice between recipes looked at them
        (the held-out photos of `psnr_gain_db` chose between recipes, so they are a validation set)."""
        return self.record.get("test", {}).get("gain_db")

    @property
    def int8(self) -> Path | None:
        """The shipped all-int8 model (Q/DQ ONNX, made by `srkit quantize NAME --qat`), if this model has one."""
        record = self.record.get("int8")
        return weights_dir() / record["file"] if record else None

    @property
    def int8_drop_db(self) -> float | None:
        record = self.record.get("int8")
        return float(record["psnr_drop_db"]) if record else None

    @property
    def baselines_psnr_y(self) -> dict[str, float]:
        """PSNR-Y of the classical upscalers (nearest, bilinear, bicubic, lanczos) on the same held-out photos."""
        return dict(self.record.get("validation", {}).get("baselines_psnr_y", {}))


def weights_dir() -> Path:
    return Path(str(resources.files("srkit.models").joinpath("weights")))


@lru_cache(maxsize=1)
def entries() -> dict[str, ZooEntry]:
    path = weights_dir() / "zoo.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {
        name: ZooEntry(
            name=name,
            arch=rec["arch"],
            scale=int(rec["scale"]),
            params=dict(rec["params"]),
            weights=weights_dir() / rec["file"],
            parameters=int(rec["parameters"]),
            origin=rec["origin"],
            record=rec,
        )
        for name, rec in raw.items()
    }


def is_bundled(name: str) -> bool:
    return name in entries()


def get(name: str) -> ZooEntry:
    try:
        return entries()[name]
    except KeyError:
        known = ", ".join(entries()) or "none"
        raise InputError(f"no bundled model named {name!r}; bundled: {known}") from None
