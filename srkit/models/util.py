"""Detection helpers shared by the architecture modules: facts read from a state dict's keys and shapes.

No torch here: a state dict's values need only a `.shape`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

StateDict = Mapping[str, Any]  # str -> torch.Tensor; kept loose so this module needs no torch


def conv_shape(sd: StateDict, key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    return tuple(value.shape) if value is not None else None


def max_index(sd: StateDict, pattern: str) -> int | None:
    """Highest N captured by `pattern` (a regex with one group) over the keys, or None."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in sd if (m := rx.match(k))]
    return max(found) if found else None


def upsample_scale(sd: StateDict, prefix: str, num_feat: int) -> int | None:
    """The scale an Upsample's convs (prefix.0, prefix.2, ...) imply, or None if they fit no Upsample."""
    outs = []
    for i in range(0, 16, 2):
        shape = conv_shape(sd, f"{prefix}.{i}.weight")
        if shape is None:
            break
        outs.append(shape[0])
    if outs == [9 * num_feat]:
        return 3
    if outs and all(o == 4 * num_feat for o in outs):
        return 2 ** len(outs)
    return None
