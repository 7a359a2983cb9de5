"""Images on a Ray cluster: a Ray Data pipeline through an actor pool of `Upscaler`s.

- `upscale_dataset`: for people with their own Ray Data pipeline (read from and write to wherever Ray Data does).
- `upscale_folder_on_ray`: what `srkit upscale --ray` runs: (input, output) pairs planned exactly as on one machine, each
  output written atomically on the worker, a rerun skipping the outputs already complete, a bad file reported with
  its reason while the rest is done, and a per-node summary (manifest) of done / skipped / failed.

Inputs and outputs of `upscale_folder_on_ray` are paths: on a cluster of several machines they must be on storage that
every node sees at the same path (NFS, a mounted bucket). The model travels with the job.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srkit._fs import atomic_path
from srkit.cluster._ray import (
    ACTOR_CPUS,
    ACTOR_START_TIMEOUT_S,
    Connection,
    connect,
    disconnect,
    quiet_data_context,
    ray_module,
)
from srkit.cluster.workers import FileUpscaler, ImageBatchUpscaler, WorkerOptions
from srkit.errors import BackendUnavailableError, InputError

if TYPE_CHECKING:
    import ray.data

MANIFEST_NAME = "srkit-ray-manifest.json"
ITEMS_NAME = "srkit-ray-items.jsonl"  # beside the manifest: one line per item, with the node it ran on
MAX_BLOCKS = 4096  # input blocks: enough to balance the pool, few enough that planning stays cheap


@dataclass(frozen=True)
class ClusterOptions:
    """How the job is spread. `workers`: actors in the pool (default: one per `threads_per_worker` cluster CPUs,
    or per `gpus_per_worker` GPUs); `batch_size`: items per actor call."""

    backend: str = "auto"
    device: str | None = None  # None: "cuda" when gpus_per_worker > 0, else "cpu"
    precision: str = "fp32"
    tile: int | str | None = None
    tile_overlap: int | None = None
    quality: int = 95
    workers: int | None = None
    threads_per_worker: int = 1
    batch_size: int = 4
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, not {self.workers}")
        if self.threads_per_worker < 1:
            raise InputError(f"--threads-per-worker must be at least 1, not {self.threads_per_worker}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker cannot be negative ({self.gpus_per_worker})")

    @property
    def resolved_device(self) -> str:
        return self.device or ("cuda" if self.gpus_per_worker > 0 else "cpu")


@dataclass
class NodeSummary:
    ip: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    workers: list[int] = field(default_factory=list)  # the actor processes (pids) that ran items there


@dataclass
class ClusterReport:
    items: int
    done: int
    skipped: int
    failed: int
    seconds: float
    workers: int
    threads_per_worker: int
    backend: str
    precision: str
    address: str
    nodes: dict[str, NodeSummary]  # node id -> counts
    failures: list[dict[str, str]]  # {"src", "reason"}

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["images_per_s"] = round(self.images_per_s, 3)
        data["seconds"] = round(self.seconds, 3)
        return data


def _pick_backend(backend: str, device: str) -> str:
    """`auto` is decided here, once, so that every node runs the same backend (and so gives the same pixels).
    Where the driver itself cannot run the device (a laptop submitting to a GPU cluster), each node decides."""
    if backend.lower() != "auto":
        return backend
    from srkit.errors import BackendUnavailableError
    from srkit.runtime import registry

    try:
        return registry.pick(backend, device).name
    except BackendUnavailableError:
        return backend


def _worker_count(options: ClusterOptions, connection: Connection) -> int:
    if options.workers is not None:
        return options.workers
    count = max(1, int(connection.cpus // options.threads_per_worker))
    if options.gpus_per_worker > 0:
        if connection.gpus < options.gpus_per_worker:
            raise InputError(f"--gpus-per-worker {options.gpus_per_worker:g}: the cluster has {connection.gpus:g} GPUs")
        count = min(count, int(connection.gpus // options.gpus_per_worker))
    return count


def _worker_options(options: ClusterOptions) -> WorkerOptions:
    device = options.resolved_device
    return WorkerOptions(backend=_pick_backend(options.backend, device), device=device, precision=options.precision,
                         threads=options.threads_per_worker, tile=options.tile, tile_overlap=options.tile_overlap,
                         quality=options.quality)


def _map_args(model: Path, options: ClusterOptions, worker_options: WorkerOptions, workers: int) -> dict[str, Any]:
    ray = ray_module()
    if not model.is_file():
        raise InputError(f"model not found: {model}")
    args: dict[str, Any] = {
        # the bytes go into the object store once and the actors get a reference (read with ray.get): inline,
        # large constructor arguments could not be recovered when Ray restarts an actor (ray #53727)
        "fn_constructor_kwargs": {"model_name": model.name, "model_ref": [ray.put(model.read_bytes())],
                                  "options": worker_options},
        "compute": ray.data.ActorPoolStrategy(size=workers),
        "num_cpus": ACTOR_CPUS,
        "batch_size": options.batch_size,
        "batch_format": "numpy",
    }
    if options.gpus_per_worker > 0:
        args["num_gpus"] = options.gpus_per_worker
    return args


# ---- the Python API ------------------------------------------------------------------------------
def upscale_dataset(ds: ray.data.Dataset, model: str | Path, *, backend: str = "auto", device: str | None = None,
                    precision: str = "fp32", tile: int | str | None = None, tile_overlap: int | None = None,
                    workers: int | None = None, threads_per_worker: int = 1, batch_size: int = 4,
                    gpus_per_worker: float = 0.0, column: str = "image") -> ray.data.Dataset:
    """A Dataset of images -> a Dataset of upscaled images (lazy, like every Ray Data transform).

    Rows hold an image array in `column` (as `ray.data.read_images` makes them: HxW or HxWxC, uint8 or uint16)
    or only a `path` column of image files (read on the workers). The output rows have the upscaled image in
    `column`; other columns pass through. The model is loaded once per actor of the pool.

    >>> ds = ray.data.read_images("s3://bucket/photos", include_paths=True)
    >>> upscale_dataset(ds, "espcn-x3.onnx", workers=8).write_images("s3://bucket/x3", column="image")
    """
    options = ClusterOptions(backend=backend, device=device, precision=precision, tile=tile,
                             tile_overlap=tile_overlap, workers=workers, threads_per_worker=threads_per_worker,
                             batch_size=batch_size, gpus_per_worker=gpus_per_worker)
    connection = connect()
    count = _worker_count(options, connection)
    args = _map_args(Path(model), options, _worker_options(options), count)
    args["fn_constructor_kwargs"]["column"] = column
    return ds.map_batches(ImageBatchUpscaler, **args)


# ---- files (the command line) --------------------------------------------------------------------
def upscale_folder_on_ray(jobs: Sequence[tuple[Path, Path]], model: str | Path, options: ClusterOptions | None = None,
                          *, manifest: str | Path | None = None,
                          on_item: Callable[[dict[str, Any]], None] | None = None) -> ClusterReport:
    """Upscale (input, output) pairs on the Ray cluster at RAY_ADDRESS (else on a local Ray started here).

    Outputs that exist already are skipped (a rerun resumes); an item whose worker dies is retried by Ray on
    another actor. `manifest`: where to write the JSON summary (per node: done, skipped, failed), if anywhere;
    beside it, `srkit-ray-items.jsonl` has one line per item: where it ran (node id, IP, worker pid), its status
    and reason, and its seconds. `on_item` sees each finished item's row (the same fields)."""
    options = options or ClusterOptions()
    if not jobs:
        raise InputError("no images to upscale")
    ray = ray_module()
    start = time.perf_counter()
    connection = connect()
    items_log = Path(manifest).with_name(ITEMS_NAME) if manifest is not None else None
    try:
        quiet_data_context()
        count = _worker_count(options, connection)
        worker_options = _worker_options(options)
        rows = [{"src": str(Path(src).resolve()), "dst": str(Path(dst).resolve())} for src, dst in jobs]
        blocks = min(MAX_BLOCKS, max(1, math.ceil(len(rows) / options.batch_size)))
        count = min(count, blocks)  # an actor with no block to work on would only load the model
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        out = ds.map_batches(FileUpscaler, **_map_args(Path(model), options, worker_options, count))
        nodes: dict[str, NodeSummary] = {}
        failures: list[dict[str, str]] = []
        with contextlib.ExitStack() as stack:
            log = None
            if items_log is not None:
                log = stack.enter_context(stack.enter_context(atomic_path(items_log)).open("w"))
            for batch in out.iter_batches(batch_format="numpy", batch_size=None):
                for i in range(len(batch["src"])):
                    row = {key: _plain(values[i]) for key, values in batch.items()}
                    node = nodes.setdefault(row["node"], NodeSummary(ip=row["ip"]))
                    setattr(node, row["status"], getattr(node, row["status"]) + 1)
                    if row["pid"] not in node.workers:
                        node.workers.append(row["pid"])
                    if row["status"] == "failed":
                        failures.append({"src": row["src"], "reason": row["reason"]})
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                    if on_item is not None:
                        on_item(row)
    except ray.exceptions.GetTimeoutError:
        raise BackendUnavailableError(
            f"the Ray cluster could not start {count} workers in {ACTOR_START_TIMEOUT_S} s: it has {connection.cpus:g} "
            f"CPUs and {connection.gpus:g} GPUs; ask for fewer --workers (or --gpus-per-worker)") from None
    finally:
        disconnect(connection)
    report = ClusterReport(
        items=len(rows), done=sum(n.done for n in nodes.values()), skipped=sum(n.skipped for n in nodes.values()),
        failed=len(failures), seconds=time.perf_counter() - start, workers=count,
        threads_per_worker=options.threads_per_worker, backend=worker_options.backend,
        precision=worker_options.precision, address=connection.address, nodes=nodes,
        failures=sorted(failures, key=lambda f: f["src"]))
    if manifest is not None:
        write_manifest(report, Path(manifest))
    return report


def write_manifest(report: ClusterReport, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones (JSON, comparisons)."""
    return value.item() if hasattr(value, "item") else value
