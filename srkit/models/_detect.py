"""Detection helpers of the modern architectures (beside `srkit.models.util`): hyperparameters from the keys
and shapes of a state dict.

Pure functions of the state dict (no torch import): a detector returns None as soon as a key it needs is
missing or a shape does not fit, so every registered architecture can look at every file without raising.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from srkit.models.util import StateDict, conv_shape

shape = conv_shape  # any tensor's shape, not only a conv's


def has_all(sd: StateDict, keys: Iterable[str]) -> bool:
    return all(k in sd for k in keys)


def seq_len(sd: StateDict, prefix: str) -> int:
    """Length of a ModuleList/Sequential stored under `prefix`: 1 + the highest N of `prefix.N.*` (0 if none)."""
    rx = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = [int(m.group(1)) for k in sd if (m := rx.match(k))]
    return max(found) + 1 if found else 0


def shuffle_scale(out_channels: int, channels: int) -> int | None:
    """s when a conv of `out_channels` feeds PixelShuffle(s) to give `channels` maps, else None."""
    s2, rem = divmod(out_channels, channels)
    s = math.isqrt(s2) if s2 > 0 else 0
    return s if rem == 0 and s >= 1 and s * s == s2 else None


def basicsr_upsample(sd: StateDict, prefix: str) -> tuple[int, int] | None:
    """(scale, num_feat) of a BasicSR `Upsample` stored under `prefix` (convs at .0, .2, ...), or None.

    log2(scale) stages of conv(nf -> 4 nf) + PixelShuffle(2), or one conv(nf -> 9 nf) + PixelShuffle(3).
    """
    outs: list[tuple[int, int]] = []
    for i in range(0, 16, 2):
        s = shape(sd, f"{prefix}.{i}.weight")
        if s is None:
            break
        outs.append((s[0], s[1]))
    if not outs:
        return None
    num_feat = outs[0][1]
    if outs == [(9 * num_feat, num_feat)]:
        return 3, num_feat
    if all(o == (4 * num_feat, num_feat) for o in outs):
        return 2 ** len(outs), num_feat
    return None


def window_of(table_rows: int) -> int | None:
    """Window size w of a relative-position table of (2w - 1)^2 rows, or None."""
    side = math.isqrt(table_rows)
    if side * side != table_rows or side % 2 == 0:
        return None
    return (side + 1) // 2


def ratio(numerator: int, denominator: int) -> float:
    """A hyperparameter stored as a ratio of widths (mlp_ratio, ffn_scale), rounded as configs write it."""
    return round(numerator / denominator, 4)
