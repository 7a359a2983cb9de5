"""Batch jobs: which output file each input image gets, decided before any work.

One library home for the rules the CLI, the Ray cluster path and Python users share: an output tree that
mirrors the input tree, no two inputs writing one output, the output tree (and srkit's own temp files and
`upscaled_xN` folders) never read back as input, the output format known before the model runs. Warnings
(a file skipped, an animated image cut to its first frame) go to the "srkit" logger; the CLI prints them as
`srkit: warning:` lines.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from srkit._fs import is_temp_name
from srkit.errors import InputError
from srkit.imageio import IMAGE_SUFFIXES, ImageFile, is_image_path, load_image

log = logging.getLogger("srkit")

FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp"}


def plan_outputs(
    inputs: list[str], output: str | None, scale: int, out_format: str | None = None
) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs. One file in: -o is a file (or an existing folder); else a folder
    that mirrors the input tree. `out_format` changes the suffix of outputs that are not named by -o.

    Refused before any work: an image-like -o for several inputs, -o naming an input folder, and two inputs
    that would write one output. The output tree is left out of a walk of an input folder that holds it."""

    suffix = FORMAT_SUFFIX[out_format.lower()] if out_format else None
    single = is_single_file(inputs, output)
    root = None if single else output_root(output, scale)
    if root is not None and output is not None and not root.is_dir() and is_image_path(root):
        raise InputError(f"-o {output} names an image file, but the input is a folder or several files; "
                         "give a folder for -o")
    sources: list[tuple[Path, Path]] = []  # (file, path relative to the output root)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if root is not None and root.resolve() == path.resolve():
                raise InputError(f"-o {output} is the input folder {path}; choose another output folder")
            sources += [(p, p.relative_to(path)) for p in images_in_folder(path, exclude=root)]
        elif path.is_file():
            if not is_image_path(path):
                raise InputError(f"{path}: unsupported input type {path.suffix!r}")
            sources.append((path, Path(path.name)))
        else:
            raise InputError(f"input not found: {path}")
    sources = drop_repeated_files(sources)
    if not sources:
        raise InputError("no images to upscale")
    if root is None:
        src = sources[0][0]
        dst = Path(output) if output else src.with_name(f"{src.stem}_x{scale}{suffix or src.suffix}")
        return [(src, dst)]
    jobs = [(src, root / (rel.with_suffix(suffix) if suffix else rel)) for src, rel in sources]
    refuse_output_collisions(jobs)
    return jobs


def is_single_file(inputs: list[str], output: str | None) -> bool:
    """One file in and -o (if any) not a folder (an existing one, or one written `out/`): -o names the output
    file itself."""
    names_folder = output is not None and (Path(output).is_dir() or output.endswith(("/", os.sep)))
    return len(inputs) == 1 and not Path(inputs[0]).is_dir() and not names_folder


# what `output_root` names a folder run's output when -o is not given; never read back as input by a walk
DEFAULT_OUTPUT_FOLDER = re.compile(r"upscaled_x[0-9]+")


def output_root(output: str | None, scale: int) -> Path:
    return Path(output) if output else Path(f"upscaled_x{scale}")


def images_in_folder(folder: Path, *, exclude: Path | None = None) -> list[Path]:
    """The images under `folder`, sorted. Left out: the tree of `exclude` (the output folder, when it lies
    inside: a second run must not read the first one's results as inputs), folders named as srkit names its
    default outputs (`upscaled_x3`: another run's results), and srkit's own temp files (a killed run's
    leftovers). Other files that are not images are named in a warning."""

    excluded = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        kept = []
        for name in sorted(dirnames):
            if excluded is not None and (here / name).resolve() == excluded:
                continue
            if DEFAULT_OUTPUT_FOLDER.fullmatch(name):
                log.warning(f"skipping {here / name} (an srkit output folder)")
                continue
            kept.append(name)
        dirnames[:] = kept
        files += [here / name for name in filenames if not is_temp_name(name)]
    files = sorted(p for p in files if p.is_file())
    images = [p for p in files if is_image_path(p)]
    for skipped in sorted(set(files) - set(images)):
        log.warning(f"skipping {skipped} (not an image)")
    return images


def drop_repeated_files(sources: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """The same file named twice (`a.png a.png`, or a file and its folder) is upscaled once."""
    seen: set[Path] = set()
    kept = []
    for src, rel in sources:
        key = src.resolve()
        if key not in seen:
            seen.add(key)
            kept.append((src, rel))
    return kept


def refuse_output_collisions(jobs: list[tuple[Path, Path]]) -> None:
    """Two inputs that would write one output (same name from two folders, or a.jpg + a.png with --format png):
    one result would silently replace the other, so nothing runs."""
    first: dict[str, Path] = {}
    for src, dst in jobs:
        key = os.path.normcase(os.path.abspath(dst))
        if key in first:
            raise InputError(f"{first[key]} and {src} would both be written to {dst}; "
                             "upscale them in separate runs with different -o folders, or rename one")
        first[key] = src


def check_image_output(dst: Path) -> None:
    """The output's format is known before the model runs, not after."""

    if not is_image_path(dst):
        raise InputError(f"{dst}: unsupported output extension {dst.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")


def load_input(src: Path) -> ImageFile:
    """Read an input; an animated or multi-page file is cut to its first frame, and says so."""

    loaded = load_image(src)
    if loaded.frames > 1:
        log.warning(f"{src} holds {loaded.frames} frames (animated or multi-page); only the first is upscaled")
    return loaded




def make_output_root(jobs: list[tuple[Path, Path]]) -> None:
    root = common_root(jobs)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK):
        raise InputError(f"cannot write into the output folder {root}")


def common_root(jobs: list[tuple[Path, Path]]) -> Path:
    return Path(os.path.commonpath([str(dst.parent) for _, dst in jobs]))
