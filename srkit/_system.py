"""What the machine is and has free right now (CPU model and ISA flags, memory); core, standard library only."""

from __future__ import annotations

import os
import platform
from functools import cache


def available_memory_bytes() -> int | None:
    """Memory the kernel can hand out without swapping (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@cache
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as fh:
            return tuple(fh.read().splitlines())
    except OSError:
        return ()


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what the platform says."""
    lines = _cpuinfo_lines()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags as Linux names them (avx2, avx512_vnni, avx512_bf16, amx_int8, ...); empty elsewhere."""
    lines = _cpuinfo_lines()
    return frozenset(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))


def has_int8_dot_product() -> bool:
    """VNNI or AMX: int8 products accumulate in int32. Without them (plain AVX2) x86 int8 kernels multiply
    u8 x s8 pairs into a saturating int16 (vpmaddubsw), so int8 results depend on the CPU."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
