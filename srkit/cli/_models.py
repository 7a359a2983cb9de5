"""MODEL arguments: an exported .onnx, or a bundled name exported on the fly into a cache folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from srkit.errors import InputError


def cache_dir() -> Path:
    root = os.environ.get("SRKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "srkit"
    )
    return Path(root)


def resolve_onnx(model: str, *, other_formats: bool = False, precision: str | None = None) -> Path:
    """`other_formats`: a model in a format a backend of its own runs is a model too (an ncnn .param, what
    `srkit upscale --backend ncnn` runs; `Backend.model_suffix`). `precision` "int8" with a bundled name: the
    all-int8 model shipped with it (`srkit zoo`), where there is one."""
    path = Path(model)
    if path.is_file():
        if other_formats:
            from srkit.runtime import registry

            if path.suffix.lower() in registry.model_suffixes():
                return path
        if path.suffix.lower() != ".onnx":
            raise InputError(f"{model} is not an .onnx model; export it first: srkit export {model}")
        return path
    from srkit.models import zoo

    if not zoo.is_bundled(model):
        known = ", ".join(zoo.entries())
        raise InputError(f"model not found: {model} (neither a file nor a bundled model: {known})")
    entry = zoo.get(model)
    if precision == "int8" and entry.int8 is not None:
        return entry.int8
    from srkit.models.loader import sha256_file

    target = cache_dir() / "onnx" / f"{model}-{sha256_file(entry.weights)[:12]}.onnx"
    if not target.is_file():
        from srkit.export import export_model

        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"srkit: exporting bundled {model} to {target}", file=sys.stderr)
        export_model(model, target)
    return target
