"""How srkit is installed (issue 16 items 16 and 18): the editable install of scripts/setup.sh, and the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import srkit

ROOT = Path(__file__).resolve().parents[1]


def _env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _import_srkit_from(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import srkit; print(srkit.__version__)"], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=_env_without_pythonpath())


def test_clone_named_srkit_does_not_shadow_the_package(tmp_path: Path) -> None:
    """A clone called srkit/ with Python started from its parent folder: the folder (no __init__.py) must not
    become a namespace package `srkit` without __version__. setuptools' default editable import hook loses to
    it; scripts/setup.sh's compat (path entry) install does not."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if _import_srkit_from(elsewhere).returncode != 0:
        pytest.skip("srkit is not installed in this environment (scripts/setup.sh installs it)")
    parent = tmp_path / "parent"
    (parent / "srkit").mkdir(parents=True)
    (parent / "srkit" / "README.md").write_text("a clone's root: no __init__.py\n")
    run = _import_srkit_from(parent)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == srkit.__version__


def test_setup_script_installs_in_compat_mode() -> None:
    """What the test above checks in the installed environment, checked in the script that makes it."""
    script = (ROOT / "scripts" / "setup.sh").read_text()
    install = next(line for line in script.splitlines() if "-e \".[dev" in line)
    following = script[script.index(install):].splitlines()[1]
    assert "editable_mode=compat" in install + following


def _package_files() -> set[str]:
    package = ROOT / "srkit"
    return {str(p.relative_to(ROOT)) for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc",)}


def test_wheel_holds_every_package_file(tmp_path: Path) -> None:
    """`python -m build` makes a wheel with the bundled weights, zoo and images, not only the code."""
    pytest.importorskip("build")
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "srkit", src / "srkit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("srkit-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = _package_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert {"srkit/data/sample.png", "srkit/models/weights/espcn-x3.safetensors",
            "srkit/models/weights/zoo.json"} <= names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        assert "srkit = srkit.cli.main:run" in zf.read(entry).decode()


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv() -> None:
    """scripts/check_wheel.sh: fresh venv, the wheel only, export and upscale from outside the tree (minutes)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    run = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True,
                         timeout=1800, env=_env_without_pythonpath())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "export and upscale from the wheel: OK" in run.stdout
