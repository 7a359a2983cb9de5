"""Atomic file writes: a temp file in the target folder, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from srkit.errors import InputError

# A temp name is `.STEM.XXXXXXXX.partSUFFIX`: hidden, and marked so that a folder walk can tell a leftover of
# a killed run from an input. STEM is cut (and made unique by a hash) so that the name stays far below the
# 255-byte limit of common file systems whatever the target's name.
TEMP_STEM_BYTES = 64
TEMP_SUFFIX_BYTES = 16  # longer "suffixes" are not formats; the temp name then ends in plain `.part`
_TEMP_NAME = re.compile(r"^\..*\.[a-z0-9_]{8}\.part(\.[^.]+)?$", re.DOTALL)  # mkstemp's 8 random characters


def check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")


def refuse_overwriting_inputs(output: Path, inputs: list[Path]) -> None:
    for item in inputs:
        if output.exists() and item.exists() and output.resolve() == item.resolve():
            raise InputError(f"refusing to overwrite the input {item}; choose another output with -o")


def is_temp_name(name: str) -> bool:
    """A name `atomic_path` gives its temp files (a leftover of a killed run, never an input)."""
    return bool(_TEMP_NAME.match(name))


def _short(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def temp_affixes(path: Path) -> tuple[str, str]:
    """(prefix, suffix) for mkstemp: the name stays short and still ends like the target (muxers and encoders
    that look at the extension see the right one)."""
    stem = path.stem
    if len(stem.encode("utf-8", "surrogateescape")) > TEMP_STEM_BYTES:
        digest = hashlib.sha256(stem.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        stem = f"{_short(stem, TEMP_STEM_BYTES - 9)}-{digest}"
    suffix = path.suffix if len(path.suffix.encode("utf-8", "surrogateescape")) <= TEMP_SUFFIX_BYTES else ""
    return f".{stem}.", f".part{suffix}"


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else set and restored."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode any new file of the user gets (0644 under umask 022); mkstemp's own 0600 is for the temp only."""
    return 0o666 & ~current_umask()


def remove_stale_temp_files(dst: Path) -> None:
    """Remove the temp files a killed writer left beside `dst`: `atomic_path` names them prefix + tempfile's 8
    random characters + suffix (`temp_affixes`). Only a write of this same output makes such a name (the exact
    pattern keeps `a.png` from touching the temp file of `a.b.png`). Call it only where no other writer of `dst`
    can still be running (a resumed run: Ray retries an item only after the worker that held it has died)."""
    prefix, suffix = temp_affixes(dst)
    pattern = re.compile(rf"{re.escape(prefix)}[a-z0-9_]{{8}}{re.escape(suffix)}")
    for stale in glob.glob(str(dst.parent / f"{glob.escape(prefix)}*{glob.escape(suffix)}")):
        if pattern.fullmatch(Path(stale).name):
            Path(stale).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on any error remove it.

    The result gets the mode the umask gives a new file, not mkstemp's 0600."""
    path = Path(path)
    check_writable(path)
    prefix, suffix = temp_affixes(path)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Streaming sha256 of a file: model and checkpoint identities, cache keys."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
