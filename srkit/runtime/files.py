"""Image files through an `Upscaler`: a folder (or a list of files) in, a mirrored folder out, every file reported.

What `srkit upscale` does with files, for Python users and the Ray workers alike:

- `plan_files`: the (input, output) pairs, decided before any work (srkit.jobs: the folder walk, output names
  that would collide refused, the output tree never read back, output formats known, inputs never overwritten);
- `upscale_files`: the pairs upscaled `batch` files at a time (images of one shape and dtype share a model call),
  each output written atomically; a file that cannot be read, upscaled or written is reported with its reason
  and the others are done; with `skip_existing`, an output already there is a finished one (outputs appear
  only when whole) and is skipped, so a rerun resumes;
- `upscale_file`: one pair, the same rules (what a Ray worker runs for each item).

>>> with Upscaler("espcn-x3.onnx") as up:
...     report = upscale_files(up, ["photos/"], "photos_x3/", batch=4)
>>> report.done, [(o.src, o.reason) for o in report.failures]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from srkit._fs import refuse_overwriting_inputs, remove_stale_temp_files
from srkit.errors import InputError, SrkitError
from srkit.imageio import ImageFile, write_image
from srkit.jobs import check_image_output, common_root, is_single_file, load_input, make_output_root, plan_outputs

if TYPE_CHECKING:
    from srkit.runtime.upscaler import Upscaler

log = logging.getLogger("srkit")


class Status(str, Enum):
    DONE = "done"  # written now
    SKIPPED = "skipped"  # the output was already there (skip_existing)
    FAILED = "failed"  # `reason` says why


@dataclass(frozen=True)
class FileOutcome:
    src: Path
    dst: Path
    status: Status
    reason: str = ""  # why it failed, in one line (the message of the error)
    seconds: float = 0.0


@dataclass(frozen=True)
class FilePlan:
    """(input, output) pairs. `single`: one file in and -o (if any) names the output file itself."""

    jobs: list[tuple[Path, Path]]
    single: bool = False

    @property
    def root(self) -> Path:
        """The folder that holds every output."""
        return common_root(self.jobs)


@dataclass
class FilesReport:
    outcomes: list[FileOutcome] = field(default_factory=list)  # in the order of the plan
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def items(self) -> int:
        return len(self.outcomes)

    @property
    def done(self) -> int:
        return self.count(Status.DONE)

    @property
    def skipped(self) -> int:
        return self.count(Status.SKIPPED)

    @property
    def failed(self) -> int:
        return self.count(Status.FAILED)

    @property
    def failures(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.status == Status.FAILED]

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def plan_files(inputs: Sequence[str | Path], output: str | Path | None = None, *, scale: int,
               out_format: str | None = None) -> FilePlan:
    """The plan `srkit upscale` makes for image inputs (files and folders): see srkit.jobs.plan_outputs. Refused
    here, before any work: an output format srkit cannot write and an output that is one of the inputs."""
    names = [str(item) for item in inputs]
    out = None if output is None else str(output)
    jobs = plan_outputs(names, out, scale, out_format)
    all_inputs = [src for src, _ in jobs]
    for _, dst in jobs:
        check_image_output(dst)
        refuse_overwriting_inputs(dst, all_inputs)
    return FilePlan(jobs, single=is_single_file(names, out))


def upscale_files(
    upscaler: Upscaler,
    inputs: Sequence[str | Path] | FilePlan,
    output: str | Path | None = None,
    *,
    out_format: str | None = None,
    quality: int = 95,
    batch: int = 1,
    skip_existing: bool = False,
    on_outcome: Callable[[FileOutcome], None] | None = None,
) -> FilesReport:
    """Upscale image files (or folders of them) into `output`; every file ends up in the report as done, skipped
    or failed with its reason. A plan (`plan_files`) may be given instead of `inputs` and `output`.

    `quality`: JPEG/WebP quality of the outputs; `batch`: files read and upscaled together; `on_outcome` sees each
    file's outcome as soon as it is known (for progress). Errors that concern the whole run (no images, output
    names that collide, an output folder that cannot be made) are raised before any work."""
    if batch < 1:
        raise InputError(f"batch must be at least 1, not {batch}")
    if isinstance(inputs, FilePlan):
        if output is not None or out_format is not None:
            raise InputError("give either a plan or inputs with output and out_format, not both")
        plan = inputs
    else:
        plan = plan_files(inputs, output, scale=upscaler.scale, out_format=out_format)
    make_output_root(plan.jobs)
    report = FilesReport()
    start = time.perf_counter()

    def record(outcome: FileOutcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    for first in range(0, len(plan.jobs), batch):
        chunk = plan.jobs[first : first + batch]
        if skip_existing:
            finished = [job for job in chunk if job[1].exists()]
            for src, dst in finished:
                remove_stale_temp_files(dst)
                record(FileOutcome(src, dst, Status.SKIPPED))
            chunk = [job for job in chunk if job not in finished]
        for outcome in _upscale_chunk(upscaler, chunk, quality):
            if skip_existing and outcome.status == Status.DONE:
                remove_stale_temp_files(outcome.dst)
            record(outcome)
    report.outcomes.sort(key=_plan_order(plan))
    report.seconds = time.perf_counter() - start
    return report


def _plan_order(plan: FilePlan) -> Callable[[FileOutcome], int]:
    order = {src: i for i, (src, _) in enumerate(plan.jobs)}
    return lambda outcome: order[outcome.src]


def upscale_file(upscaler: Upscaler, src: str | Path, dst: str | Path, *, quality: int = 95,
                 skip_existing: bool = False) -> FileOutcome:
    """One file, reported rather than raised: done, skipped (`skip_existing` and `dst` is there) or failed with
    its reason. With `skip_existing`, the temp files a killed earlier attempt left beside `dst` are removed."""
    src, dst = Path(src), Path(dst)
    if skip_existing and dst.exists():
        remove_stale_temp_files(dst)
        return FileOutcome(src, dst, Status.SKIPPED)
    start = time.perf_counter()
    try:
        loaded = load_input(src)
    except SrkitError as exc:
        return FileOutcome(src, dst, Status.FAILED, str(exc), time.perf_counter() - start)
    outcome = _finish(upscaler, src, dst, loaded, None, quality, start)
    if skip_existing and outcome.status == Status.DONE:
        remove_stale_temp_files(dst)
    return outcome


def write_result(dst: Path, image: np.ndarray, *, quality: int = 95, icc_profile: bytes | None = None) -> Path:
    """Write an upscaled image to `dst` (its folder made if needed), saying so when the format drops its alpha."""
    if image.ndim == 3 and image.shape[2] == 4 and dst.suffix.lower() in (".jpg", ".jpeg"):
        log.warning(f"{dst}: JPEG has no alpha channel; transparency dropped")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_image(dst, image, quality=quality, icc_profile=icc_profile)


def _upscale_chunk(upscaler: Upscaler, chunk: list[tuple[Path, Path]], quality: int) -> list[FileOutcome]:
    """Read, upscale and write one batch; same-size images share one model call. A failure stays with its file:
    a batch that fails is retried one image at a time, so the error names the image that caused it."""
    outcomes: list[FileOutcome] = []
    loaded: list[tuple[Path, Path, ImageFile]] = []
    start = time.perf_counter()
    for src, dst in chunk:
        try:
            loaded.append((src, dst, load_input(src)))
        except SrkitError as exc:
            outcomes.append(FileOutcome(src, dst, Status.FAILED, str(exc)))
    groups: dict[tuple[object, ...], list[tuple[Path, Path, ImageFile]]] = {}
    for item in loaded:
        pixels = item[2].pixels
        groups.setdefault((pixels.shape, pixels.dtype.str), []).append(item)
    for group in groups.values():
        results: list[np.ndarray | None]
        try:
            results = list(upscaler.upscale_batch([item[2].pixels for item in group]))
        except SrkitError:
            results = [None] * len(group)  # retried one by one below, so the failure names its file
        for (src, dst, image), result in zip(group, results, strict=True):
            outcomes.append(_finish(upscaler, src, dst, image, result, quality, start))
    return outcomes


def _finish(upscaler: Upscaler, src: Path, dst: Path, image: ImageFile, result: np.ndarray | None, quality: int,
            start: float) -> FileOutcome:
    """Upscale (unless `result` is given) and write one image; an error becomes its outcome."""
    try:
        if result is None:
            result = upscaler.upscale(image.pixels)
        write_result(dst, result, quality=quality, icc_profile=image.icc_profile)
    except SrkitError as exc:
        return FileOutcome(src, dst, Status.FAILED, str(exc), time.perf_counter() - start)
    except OSError as exc:
        return FileOutcome(src, dst, Status.FAILED, f"cannot write {dst}: {exc.strerror or exc}",
                           time.perf_counter() - start)
    return FileOutcome(src, dst, Status.DONE, "", time.perf_counter() - start)
