"""Foreign checkpoint layouts renamed to srkit's (BasicSR's) key names before detection.

Each layout is recognised by keys only it has, and renamed key by key; tensors are never changed, so
a converted file loads strictly into the same module as a native one. Layouts:

* ESRGAN, original repository (xinntao/ESRGAN, BSRGAN, RealSR): `RRDB_trunk.N.RDBk.convJ[.0]`, `trunk_conv`,
  `upconv1`, `upconv2`, `HRconv`, `conv_first`, `conv_last`.
* ESRGAN, older sequential files (RRDB_ESRGAN_x4.pth and the many models trained with the old BasicSR):
  `model.0`, `model.1.sub.N.RDBk.convJ.0`, `model.1.sub.<num_block>` (trunk conv), then per x2 stage
  an Upsample, a conv and an activation (`model.3`, `model.6`), `model.8` (HR conv), `model.10` (last conv).
* EDSR-PyTorch (sanghyun-son): `head.0`, `body.N.body.{0,2}`, `body.<num_block>`, `tail.0.K`, `tail.1`,
  with `sub_mean`/`add_mean` 1x1 convs holding the fixed DIV2K mean, dropped here (srkit's EDSR has it
  built in).
* RCAN, original repository (yulunzhang): as EDSR-PyTorch, with `body.G.body.B.body.{0,2}` convs,
  `body.G.body.B.body.3.conv_du.{0,2}` channel attention, `body.G.body.<num_block>` group convs.
* Files profiled with thop before saving (several public Omni-SR checkpoints): a `total_ops` and a
  `total_params` counter on every module, dropped here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from srkit.models.util import max_index

StateDict = dict[str, Any]


def _rename(sd: StateDict, rules: list[tuple[str, Any]], drop: tuple[str, ...] = ()) -> StateDict:
    """Apply the first matching (regex, replacement) rule to each key; keys matching `drop` go."""
    out: StateDict = {}
    for key, value in sd.items():
        if any(re.match(d, key) for d in drop):
            continue
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _esrgan_trunk(sd: StateDict) -> StateDict:
    return _rename(sd, [
        (r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)(?:\.0)?\.(weight|bias)$", r"body.\1.rdb\2.conv\3.\4"),
        (r"^trunk_conv\.", "conv_body."),
        (r"^upconv(\d)\.", r"conv_up\1."),
        (r"^HRconv\.", "conv_hr."),
    ])


def _esrgan_sequential(sd: StateDict) -> StateDict:
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^model\.1\.sub\.(\d+)\.RDB", k))}
    trunk = max(blocks) + 1 if blocks else 0
    # after model.0 (conv) and model.1 (the shortcut block), each x2 stage is [Upsample, conv, LeakyReLU],
    # then HR conv, LeakyReLU, last conv: the conv indices give the number of stages
    top = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^model\.(\d+)\.weight$", k))} - {0})
    if len(top) < 2:
        return sd
    *ups, hr, last = top
    names = {idx: f"conv_up{i + 1}" for i, idx in enumerate(ups)}
    names |= {hr: "conv_hr", last: "conv_last", 0: "conv_first"}
    rules = [
        (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", r"body.\1.rdb\2.conv\3.\4"),
        (rf"^model\.1\.sub\.{trunk}\.", "conv_body."),
    ] + [(rf"^model\.{idx}\.", f"{name}.") for idx, name in names.items()]
    return _rename(sd, rules)


def _edsr_original(sd: StateDict) -> StateDict:
    trunk = max_index(sd, r"^body\.(\d+)\.weight$")
    if trunk is None:  # not EDSR-PyTorch after all: leave it for detection to refuse
        return sd
    return _rename(sd, [
        (r"^head\.0\.", "conv_first."),
        (r"^body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
        (r"^body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
        (rf"^body\.{trunk}\.", "conv_after_body."),
        (r"^tail\.0\.(\d+)\.", r"upsample.\1."),
        (r"^tail\.1\.", "conv_last."),
    ], drop=(r"^sub_mean\.", r"^add_mean\."))


def _attention(m: re.Match[str]) -> str:
    # CALayer.conv_du is (conv, ReLU, conv, Sigmoid); BasicSR's attention puts the pooling first: index + 1
    return f"body.{m[1]}.residual_group.{m[2]}.rcab.3.attention.{int(m[3]) + 1}."


def _rcan_original(sd: StateDict) -> StateDict:
    trunk = max_index(sd, r"^body\.(\d+)\.weight$")
    group_conv = max_index(sd, r"^body\.0\.body\.(\d+)\.weight$")
    if trunk is None or group_conv is None:
        return sd
    return _rename(sd, [
        (r"^head\.0\.", "conv_first."),
        (r"^body\.(\d+)\.body\.(\d+)\.body\.0\.", r"body.\1.residual_group.\2.rcab.0."),
        (r"^body\.(\d+)\.body\.(\d+)\.body\.2\.", r"body.\1.residual_group.\2.rcab.2."),
        (r"^body\.(\d+)\.body\.(\d+)\.body\.3\.conv_du\.([02])\.", _attention),
        (rf"^body\.(\d+)\.body\.{group_conv}\.", r"body.\1.conv."),
        (rf"^body\.{trunk}\.", "conv_after_body."),
        (r"^tail\.0\.(\d+)\.", r"upsample.\1."),
        (r"^tail\.1\.", "conv_last."),
    ], drop=(r"^sub_mean\.", r"^add_mean\."))


def _drop_thop_counters(sd: StateDict) -> StateDict:
    return _rename(sd, [], drop=(r"^(.*\.)?total_ops$", r"^(.*\.)?total_params$"))


# (name, a key only this layout has, converter)
LAYOUTS: list[tuple[str, str, Callable[[StateDict], StateDict]]] = [
    ("esrgan-trunk", "trunk_conv.weight", _esrgan_trunk),
    ("esrgan-sequential", "model.1.sub.0.RDB1.conv1.0.weight", _esrgan_sequential),
    ("rcan-original", "body.0.body.0.body.3.conv_du.0.weight", _rcan_original),
    ("edsr-original", "body.0.body.0.weight", _edsr_original),
    ("thop-profiled", "total_ops", _drop_thop_counters),
]


def to_native(sd: StateDict) -> tuple[StateDict, str | None]:
    """(state dict with srkit key names, the name of the foreign layout converted or None)."""
    for name, marker, convert in LAYOUTS:
        if marker in sd:
            return convert(sd), name
    return sd, None
