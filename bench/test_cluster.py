"""Images/s on Ray (issue 15): one machine vs `--ray` on the same machine, and one vs two Ray workers.

    pytest bench/test_cluster.py --benchmark-json cluster.json
    SRKIT_BENCH_CLUSTER_IMAGES=400 pytest bench/test_cluster.py      # a longer job (start-up weighs less)

A folder of crops of the bundled CC0 photos (240x320, ESPCN x3 -> 720x960 PNG) is upscaled end to end: read,
model, write. Rows (ONNX Runtime fp32, the same backend everywhere so the pixels are the same):
- `one-machine`: `srkit upscale` without --ray, the backend using every core;
- `ray-1-worker-all-threads`: the same work on a local Ray, one actor with every core (the cluster path's cost);
- `ray-1-worker` and `ray-2-workers`: one thread per actor, one vs two actors (the scaling).
The Ray rows include starting the actors (each loads the model once) but not starting Ray. images/s is in each
row's extra_info. Nothing is asserted about speed (a benchmark measures); the outputs are checked for count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from srkit.data import held_out_images
from srkit.imageio import write_image

ray = pytest.importorskip("ray", reason="needs Ray (pip install 'srkit[cluster]')")

IMAGES = int(os.environ.get("SRKIT_BENCH_CLUSTER_IMAGES", "120"))
SIZE = (240, 320)  # H, W
CORES = os.cpu_count() or 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-cluster") / "in"
    root.mkdir()
    photos = list(held_out_images().values())
    h, w = SIZE
    for i in range(IMAGES):
        photo = photos[i % len(photos)]
        y, x = (i * 29) % (photo.shape[0] - h), (i * 41) % (photo.shape[1] - w)
        write_image(root / f"img{i:04d}.png", np.ascontiguousarray(photo[y : y + h, x : x + w]))
    return root


@pytest.fixture(scope="module")
def model() -> Path:
    pytest.importorskip("torch", reason="exporting the bundled model needs torch")
    from srkit.cli._models import resolve_onnx

    return resolve_onnx("espcn-x3")  # the bundled model, exported once into srkit's cache


@pytest.fixture(scope="module")
def local_ray() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local Ray
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=CORES, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        yield
        ray.shutdown()


def record(benchmark: Any, seconds: float, **extra: Any) -> None:
    benchmark.group = f"cluster: {IMAGES} images {SIZE[1]}x{SIZE[0]} -> x3 (espcn-x3, ort fp32)"
    benchmark.extra_info.update({"images": IMAGES, "seconds": seconds, "images_per_s": IMAGES / seconds,
                                 "cores": CORES, **extra})


def test_one_machine(benchmark: Any, folder: Path, model: Path, tmp_path: Path) -> None:
    from srkit.cli.main import run

    def job() -> float:
        start = time.perf_counter()
        assert run(["upscale", str(folder), "-m", str(model), "-o", str(tmp_path / "out"), "--backend", "ort"]) == 0
        return time.perf_counter() - start

    seconds = benchmark.pedantic(job, rounds=1, iterations=1)
    assert len(list((tmp_path / "out").glob("*.png"))) == IMAGES
    record(benchmark, seconds, mode="one machine", threads=CORES)


@pytest.mark.parametrize(("workers", "threads"), [(1, CORES), (1, 1), (2, 1)],
                         ids=["ray-1-worker-all-threads", "ray-1-worker", "ray-2-workers"])
def test_ray(benchmark: Any, local_ray: Any, folder: Path, model: Path, tmp_path: Path, workers: int,
             threads: int) -> None:
    from srkit.cluster import ClusterOptions, upscale_folder_on_ray

    jobs = [(p, tmp_path / "out" / p.name) for p in sorted(folder.glob("*.png"))]
    (tmp_path / "out").mkdir()
    options = ClusterOptions(backend="ort", workers=workers, threads_per_worker=threads, batch_size=4)

    def job() -> float:
        start = time.perf_counter()
        report = upscale_folder_on_ray(jobs, model, options)
        assert report.done == IMAGES and report.failed == 0
        return time.perf_counter() - start

    seconds = benchmark.pedantic(job, rounds=1, iterations=1)
    record(benchmark, seconds, mode="ray (local)", workers=workers, threads_per_worker=threads)
