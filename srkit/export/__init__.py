"""PyTorch -> ONNX: trace, simplify, check the graph, write metadata, prove parity (never imports runtime/)."""

from __future__ import annotations

from srkit.export.exporter import ExportOptions, ExportResult, export_model

__all__ = ["ExportOptions", "ExportResult", "export_model"]
