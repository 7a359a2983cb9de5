"""The README's "A five-minute tour" runs as written (issue 16 item 15).

The bash block is taken from README.md itself and run line by line in one shell, from a temporary folder that
looks like a fresh clone's root (`.venv` there is this test's virtual environment), with `set -euo pipefail`:
the first failing line is named. srkit comes from this source tree (PYTHONPATH), the cache is fresh."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST_LINES = 7  # activate, mkdir/cd, zoo, export, info, PHOTO=, the first upscale


def tour_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A five-minute tour"):]
    section = section[: section.index("\n## ", 1)]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the tour has no ```bash block"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not any(line.rstrip().endswith("\\") for line in lines), "keep each tour command on one line"
    return lines


def run_tour(lines: list[str], where: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tour activates .venv: run the tests from a virtual environment (scripts/setup.sh)")
    (where / ".venv").symlink_to(sys.prefix)
    script = ["set -euo pipefail"]
    for number, line in enumerate(lines, 1):
        script += [f"echo '@@tour {number}: '{_quote(line)} >&2", line]
    script.append("echo '@@tour done' >&2")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SRKIT_CACHE")}
    env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(where / ".cache"))
    return subprocess.run(["bash", "-c", "\n".join(script)], cwd=where, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _check(run: subprocess.CompletedProcess[str]) -> None:
    failed = [line for line in run.stderr.splitlines() if line.startswith("@@tour ")]
    assert run.returncode == 0 and failed and failed[-1] == "@@tour done", (
        f"tour line failed: {failed[-1] if failed else '(none ran)'}\n{run.stderr[-3000:]}"
    )


def test_tour_block_is_what_the_tests_expect() -> None:
    lines = tour_lines()
    assert lines[0].startswith(". .venv/bin/activate")
    assert lines[1].startswith("mkdir -p tour && cd tour")
    assert "srkit upscale" in lines[FAST_LINES - 1] and "big.png" in lines[FAST_LINES - 1]


def test_tour_first_lines(tmp_path: Path) -> None:
    run = run_tour(tour_lines()[:FAST_LINES], tmp_path, timeout=600)
    _check(run)
    out = tmp_path / "tour"
    assert (out / "espcn.onnx").is_file() and (out / "big.png").is_file()
    from PIL import Image

    from srkit.data import sample_image_path

    with Image.open(sample_image_path()) as small, Image.open(out / "big.png") as big:
        assert big.size == (small.width * 3, small.height * 3)


@pytest.mark.slow
def test_whole_tour(tmp_path: Path) -> None:
    run = run_tour(tour_lines(), tmp_path, timeout=1800)
    _check(run)
    out = tmp_path / "tour"
    for name in ("espcn.onnx", "big.png", "clip.mp4", "clip_x3.mp4", "animevideov3.onnx", "animevideov3.pth",
                 "animevideov3-fp16.onnx", "espcn-int8-ort.onnx", "r.json", "r.md", "r.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    photos = sorted(p.name for p in (out / "photos").glob("*.png"))
    assert len(photos) >= 8
    assert sorted(p.name for p in (out / "big").glob("*.png")) == photos
