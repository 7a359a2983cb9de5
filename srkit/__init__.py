"""srkit: super-resolution model export and edge deployment.

Only light names live here: importing srkit must not import torch, onnxruntime or openvino.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
