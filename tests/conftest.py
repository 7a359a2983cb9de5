"""Shared fixtures. Exports are session-scoped: tracing and the parity gate run once per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from srkit.data import held_out_images, sample_image_path
from srkit.imageio import read_image


@pytest.fixture(scope="session")
def espcn_x3_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled ESPCN x3, exported with the parity gate."""
    pytest.importorskip("torch")
    from srkit.export import export_model

    path = tmp_path_factory.mktemp("models") / "espcn-x3.onnx"
    export_model("espcn-x3", path)
    return path


@pytest.fixture(scope="session")
def sample_rgb() -> np.ndarray:
    """A real CC0 photo crop, uint8 RGB (150x200)."""
    return read_image(sample_image_path())


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return held_out_images()
