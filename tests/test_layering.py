"""The import tree of ARCHITECTURE.md, enforced on the source (after Polygraphy's dependency tests)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "srkit"
CORE = {"errors", "_optional", "meta", "ncnn_meta", "imaging", "_fs", "_system", "imageio", "quality", "pipeline", "jobs",
        "data", "__init__", "py"}
# package -> srkit packages it may import (core is always allowed)
ALLOWED = {
    "models": {"models"},
    "export": {"export", "models"},
    "calibration": {"calibration", "runtime"},  # it measures through the runtime: one session factory, one colour path
    "runtime": {"runtime"},
    "bench": {"bench", "runtime"},
    "cluster": {"cluster", "runtime"},
    "qat": {"qat", "models", "export", "calibration", "runtime"},  # trains torch weights, gates as int8 does
    "cli": {"cli", "models", "export", "calibration", "runtime", "bench", "cluster", "qat"},
    "__main__": {"cli"},
}
HEAVY = {"torch", "onnxruntime", "openvino", "tensorrt", "nncf", "av", "onnxslim", "matplotlib", "ncnn", "pnnx",
         "ray"}


def srkit_imports(path: Path, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_tree(path: Path) -> None:
    package = package_of(path)
    allowed = ALLOWED.get(package, set())
    for module in srkit_imports(path, top_level_only=False):
        parts = module.split(".")
        if parts[0] != "srkit" or len(parts) < 2 or parts[1] in CORE or parts[1] == package:
            continue
        # runtime/torch.py builds the reference network, so it alone reaches models/
        if path.name == "torch.py" and package == "runtime" and parts[1] == "models":
            continue
        assert parts[1] in allowed, f"{path.relative_to(ROOT)} imports {module}"


@pytest.mark.parametrize("path", sorted(p for p in ROOT.rglob("*.py") if package_of(p) in CORE | {"cli", "runtime",
                                        "bench", "calibration", "cluster"}), ids=lambda p: str(p.relative_to(ROOT)))
def test_heavy_packages_are_imported_lazily(path: Path) -> None:
    """Outside models/ and export/, torch & co. are imported inside functions, never at module level."""
    heavy = [m for m in srkit_imports(path, top_level_only=True) if m.split(".")[0] in HEAVY]
    assert not heavy, f"{path.relative_to(ROOT)} imports {heavy} at module level"
