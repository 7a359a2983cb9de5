"""Mixed precision that scales to hundreds of convs: group the convs into blocks, measure each block's
sensitivity from ONE quantized model, and keep the least profitable blocks in float until the budget holds.

Grouping (`conv_groups`) reads the graph, not an architecture list. Exporters name nodes after the module
path (PyTorch: `/body/body.0/rdb1/conv1/Conv`), so a conv's block is the module that holds it
(`body/body.0/rdb1`, one dense block of an RRDB); a conv at the top level (`/conv_first/Conv`, `/conv_hr/Conv`)
or with a flat name (`Conv_12`) is a group of its own. A "block" that holds more than a quarter of the model's
convs is a container (a Sequential body), not a block, and is split into its children.

Variants by graph surgery (`keep_float`): the model is quantized once; "this set of convs in float" is made by
bypassing the Q/DQ pairs that feed those convs (and the ops between them and the previous convs, where NNCF
also quantizes residual Adds and Concats) and restoring the convs' fp32 weights and biases from the fp32 model.
A float conv then computes exactly what the fp32 conv computes on the tensor it receives. No re-calibration per
attempt: on Real-ESRGAN x4plus one quantization takes about a minute on two cores, a variant a second.

The search (`search_blocks`), all on small validation crops: (1) for each group, the model with only that group
in int8 (everything else float) gives that group's own error; quantization errors of separate blocks are
close to independent, so their squared errors add. (2) Groups are ordered by error per unit of work saved
(multiply-accumulates at their own resolution: a tail conv at 4x resolution does 16x the work per weight)
and the int8 set is the longest prefix of that order that meets the budget, found by bisection from the
additive prediction. (3) The chosen model is measured on the full validation set; if it misses there, the
prefix is shortened and measured again.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from srkit.calibration import budget as B
from srkit.errors import InputError, ParityError
from srkit.meta import ModelInfo

CONV_OPS = ("Conv", "ConvTranspose")
# a container with more than this share of all convs is split into its children (a Sequential body)
MAX_BLOCK_SHARE = 0.25
# Models with at most this many convs use the greedy layer search (each attempt re-quantized): it is exact and
# cheap there. More convs: the block search.
GREEDY_MAX_CONVS = 12
SEARCH_LR_SIDE = 64  # search crops: LR side, so HR = 64 * scale (the budget's final check uses the full photos)
MACS_PROBE_SIDE = 64  # input side at which each conv's work is counted (only the ratios matter)
FINAL_TRIES = 4  # full-set measurements before giving up (each shortens the int8 prefix)


class SearchStrategy(str, Enum):
    AUTO = "auto"  # greedy up to GREEDY_MAX_CONVS convs, blocks above
    GREEDY = "greedy"  # up to four candidate convs, each attempt re-quantized (ESPCN's search)
    BLOCKS = "blocks"  # per-block sensitivity from one quantized model
    LAYERS = "layers"  # the same with every conv its own group (slow on big models: one variant per conv)

    @classmethod
    def parse(cls, value: str | SearchStrategy | None) -> SearchStrategy:
        try:
            return cls(str(value.value if isinstance(value, SearchStrategy) else value or "auto").lower())
        except ValueError:
            raise InputError(f"unknown search {value!r}; choose one of: " + ", ".join(s.value for s in cls)) from None

    def resolve(self, conv_count: int) -> SearchStrategy:
        if self != SearchStrategy.AUTO:
            return self
        return SearchStrategy.GREEDY if conv_count <= GREEDY_MAX_CONVS else SearchStrategy.BLOCKS


@dataclass(frozen=True)
class ConvGroup:
    name: str
    convs: tuple[str, ...]
    macs: int  # multiply-accumulates at a MACS_PROBE_SIDE input: the work int8 can speed up


# ---- grouping ------------------------------------------------------------------------------------
def _module_path(node_name: str) -> tuple[str, ...]:
    """`/body/body.0/rdb1/conv1/Conv` -> (body, body.0, rdb1, conv1): the op's own name dropped."""
    parts = [p for p in node_name.split("/") if p]
    return tuple(parts[:-1]) if len(parts) > 1 else tuple(parts)


def conv_groups(model: Any, *, blocks: bool = True) -> list[ConvGroup]:
    """The model's convs in groups, in graph order. `blocks=False`: one group per conv."""
    graph = model.graph
    convs = [n.name for n in graph.node if n.op_type in CONV_OPS]
    macs = conv_macs(model)
    if len(set(convs)) != len(convs) or not all(convs):  # a conv is matched across models by its name
        raise InputError("the block search needs a unique name on every conv of the model; use --search greedy")
    paths = {name: _module_path(name) if blocks else (name,) for name in convs}
    keys = {name: paths[name][:-1] for name in convs}
    limit = max(1, int(len(convs) * MAX_BLOCK_SHARE))
    while True:  # split containers, one level at a time, until every multi-conv group is a block
        members: dict[tuple[str, ...], list[str]] = {}
        for name in convs:
            members.setdefault(keys[name], []).append(name)
        split = [n for names in members.values() if len(names) > limit for n in names
                 if len(keys[n]) < len(paths[n])]
        if not split:
            break
        for name in split:
            keys[name] = paths[name][: len(keys[name]) + 1]
    groups: dict[tuple[str, ...], list[str]] = {}
    for name in convs:
        # a top-level conv (empty key: `/conv_first/Conv`, `Conv_12`) is a group of its own
        groups.setdefault(keys[name] or paths[name], []).append(name)
    return [ConvGroup("/".join(key), tuple(names), sum(macs.get(n, 0) for n in names))
            for key, names in groups.items()]


def conv_macs(model: Any, side: int = MACS_PROBE_SIDE) -> dict[str, int]:
    """Conv name -> multiply-accumulates for a 1 x C x side x side input (ONNX shape inference). A conv whose
    output shape cannot be inferred counts its weights only (as if at the input resolution, 1 pixel)."""
    import numpy as np
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    dims = probe.graph.input[0].type.tensor_type.shape.dim
    for i, dim in enumerate(dims):
        dim.Clear()
        dim.dim_value = 1 if i == 0 else (side if i >= 2 else 0)
    if len(dims) > 1 and dims[1].dim_value == 0:  # channels: keep what the model says, else 3
        dims[1].dim_value = _channels(model) or 3
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in (*inferred.graph.value_info, *inferred.graph.output)}
    except onnx.shape_inference.InferenceError:  # a graph inference cannot follow: count weights only
        shapes = {}
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type not in CONV_OPS or len(node.input) < 2:
            continue
        shape = shapes.get(node.output[0], [])
        pixels = int(np.prod(shape[2:])) if len(shape) > 2 and all(d > 0 for d in shape[2:]) else 1
        out[node.name] = sizes.get(node.input[1], 0) * pixels
    return out


def _channels(model: Any) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) > 1 else 0


# ---- graph surgery -------------------------------------------------------------------------------
def _owners(graph: Any) -> dict[str, str]:
    """Node name -> the conv whose input it prepares: a conv owns itself; any other node belongs to the nearest
    conv downstream (breadth first through the graph, Q/DQ included), or where no conv follows (a Q/DQ pair on
    the model's output, as ONNX Runtime's quantizer places one) to the nearest conv upstream. The quantizers a
    node reads then go float with that conv: NNCF quantizes a residual Add's inputs, and the Add prepares the
    next block's input."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {o: n for n in graph.node for o in n.output}
    owner: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in CONV_OPS:
            owner[node.name] = node.name
            continue
        found = (_nearest_conv(node, lambda n: [r for o in n.output for r in readers.get(o, [])])
                 or _nearest_conv(node, lambda n: [producer[i] for i in n.input if i in producer]))
        if found:
            owner[node.name] = found
    return owner


def _nearest_conv(start: Any, neighbours: Callable[[Any], list[Any]]) -> str | None:
    seen, queue = {start.name}, deque(neighbours(start))
    while queue:
        node = queue.popleft()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in CONV_OPS:
            return str(node.name)
        queue.extend(neighbours(node))
    return None


def float_convs(model: Any) -> list[str]:
    """The convs of a Q/DQ model that compute in float: those whose weights no DequantizeLinear produces.
    (An int8 conv's activation can arrive through a Concat of DQ outputs, as NNCF places them in dense blocks,
    so the weights are the reliable sign.)"""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in CONV_OPS and producer.get(n.input[1] if len(n.input) > 1 else "") != "DequantizeLinear"]


def keep_float(quantized: Any, fp32: Any, convs: Collection[str]) -> Any:
    """A copy of the Q/DQ model `quantized` in which the convs named in `convs` run in float: their activation
    inputs (and those of the ops that prepare them, see `_owners`) skip their QuantizeLinear/DequantizeLinear
    pair, and their weights and biases are the fp32 model's (a quantizer may have bias-corrected them)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(quantized)
    graph = out.graph
    wanted = set(convs)
    if not wanted:
        return out
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {i.name for i in graph.initializer}
    fp32_inits = {i.name: i for i in fp32.graph.initializer}
    fp32_convs = {n.name: n for n in fp32.graph.node if n.op_type in CONV_OPS}
    missing = wanted - set(fp32_convs)
    if missing:
        raise InputError("not convs of the fp32 model: " + ", ".join(sorted(missing)))
    owner = _owners(graph)
    for node in graph.node:
        if owner.get(node.name) not in wanted:
            continue
        is_conv = node.op_type in CONV_OPS
        for i, name in enumerate(node.input):
            if is_conv and i >= 1:
                continue  # weights and bias come from the fp32 model below
            source = _float_source(name, producer, initializers)
            if source is not None:
                node.input[i] = source
        if is_conv:
            _restore_float_parameters(graph, node, fp32_convs[node.name], fp32_inits, initializers)
    for output in graph.output:  # a Q/DQ pair on the model's output: the DQ becomes an Identity of the float
        dq, source = producer.get(output.name), _float_source(output.name, producer, initializers)
        if dq is not None and source is not None and owner.get(dq.name) in wanted:
            dq.op_type, dq.domain = "Identity", ""
            del dq.input[:]
            dq.input.append(source)
            del dq.attribute[:]
    _drop_dead(graph)
    return out


def _float_source(tensor: str, producer: dict[str, Any], initializers: set[str]) -> str | None:
    """The float tensor behind `tensor` when it is DequantizeLinear(QuantizeLinear(float activation))."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear" or q.input[0] in initializers:
        return None
    return str(q.input[0])


def _restore_float_parameters(graph: Any, node: Any, fp32_node: Any, fp32_inits: dict[str, Any],
                              initializers: set[str]) -> None:
    for i, name in enumerate(fp32_node.input[1:], start=1):
        if not name:
            continue
        if name not in fp32_inits:
            raise InputError(f"{fp32_node.name}: input {name} of the fp32 model is not a stored weight")
        copy = f"{name}__float"  # the quantized model may still hold a (bias-corrected) tensor of that name
        if copy not in initializers:
            tensor = graph.initializer.add()
            tensor.CopyFrom(fp32_inits[name])
            tensor.name = copy
            initializers.add(copy)
        if i < len(node.input):
            node.input[i] = copy
        else:
            node.input.append(copy)


def _drop_dead(graph: Any) -> None:
    """Remove what no output depends on any more (the bypassed Q/DQ pairs, the int8 weights' DQs and their
    tensors): one backward pass over the topologically sorted nodes."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    if len(live) < len(graph.node):
        kept = [_copy(n) for n in reversed(live)]
        del graph.node[:]
        graph.node.extend(kept)
    used = [_copy(i) for i in graph.initializer if i.name in needed]
    if len(used) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(used)
    infos = [_copy(v) for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


# ---- the search ----------------------------------------------------------------------------------
@dataclass
class GroupError:
    group: ConvGroup
    mse: float  # squared error (Y, 8-bit units) of the model with only this group in int8

    @property
    def cost(self) -> float:
        """Error per unit of int8 work: the order in which groups go int8."""
        return self.mse / max(self.group.macs, 1)


@dataclass
class Probe:
    int8_groups: int  # a prefix length of the order
    mse: float
    held: bool
    full: bool  # measured on the full validation set (else the search crops)


@dataclass
class BlockSearch:
    """What the search measured, for the report and the tests."""

    errors: list[GroupError] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # group names, cheapest error per work first
    probes: list[Probe] = field(default_factory=list)
    float_groups: list[str] = field(default_factory=list)


def predicted_prefix(errors: Sequence[GroupError], allowed_mse: float) -> int:
    """How many groups of the order fit under `allowed_mse`, adding their own errors."""
    total, count = 0.0, 0
    for e in errors:
        if total + e.mse > allowed_mse:
            break
        total, count = total + e.mse, count + 1
    return count


def bisect_prefix(size: int, start: int, holds: Callable[[int], bool]) -> int:
    """The longest prefix (1..size) for which `holds` is true, assuming it is monotone, probing `start` first.
    0 when not even one group meets it."""
    lo, hi = 0, size + 1  # holds(lo) taken as true, holds(hi) as false
    probe = min(max(start, 1), hi - 1)
    while hi - lo > 1:
        if holds(probe):
            lo = probe
        else:
            hi = probe
        probe = (lo + hi) // 2
    return lo


def search_blocks(quantized: Path, fp32: Path, tmp: Path, *, info: ModelInfo, engine: str, budget: B.Budget,
                  crops: B.Reference, full: B.Reference, blocks: bool, log: B.SearchLog,
                  say: Callable[[str], None]) -> tuple[B.Measurement, Path, BlockSearch]:
    """The search of the module docstring on the Q/DQ model `quantized` (every conv int8). Returns the
    measurement on the full validation set and the chosen model (a file in `tmp`); raises ParityError when
    no group can be int8 within the budget."""
    import onnx

    qproto, fproto = onnx.load(str(quantized)), onnx.load(str(fp32))
    groups = conv_groups(fproto, blocks=blocks)
    result = BlockSearch()
    counter = iter(range(1 << 30))

    def run(int8: Sequence[ConvGroup], ref: B.Reference) -> B.Measurement:
        chosen = {g.name for g in int8}
        floats = [c for g in groups if g.name not in chosen for c in g.convs]
        path = tmp / f"variant-{next(counter)}.onnx"
        onnx.save(keep_float(qproto, fproto, floats), str(path))
        try:
            return B.measure(path, ref, info, engine)
        finally:
            path.unlink()

    if len(groups) < 2:
        raise ParityError(f"int8 cannot meet the budget ({budget.describe()}) and the model has one group of "
                          "convs only; no model written")
    say(f"sensitivity of {len(groups)} groups of convs, each alone in int8, on {len(crops.images)} crops")
    for i, group in enumerate(groups):
        m = run([group], crops)
        result.errors.append(GroupError(group, m.parity_mse))
        say(f"[{i + 1}/{len(groups)}] {group.name} alone in int8: {m.describe(budget)}")
    ordered = sorted(result.errors, key=lambda e: e.cost)
    result.order = [e.group.name for e in ordered]
    cumulative = list(itertools.accumulate(e.mse for e in ordered))

    def probe(count: int, ref: B.Reference, full_set: bool) -> B.Measurement:
        m = run([e.group for e in ordered[:count]], ref)
        held = m.holds(budget)
        result.probes.append(Probe(count, m.parity_mse, held, full_set))
        where = "validation set" if full_set else "search crops"
        log.attempts.append(B.Attempt([e.group.name for e in ordered[count:]], m, held,
                                      label=f"{count} of {len(groups)} groups int8 ({where})"))
        say(f"{count} of {len(groups)} groups int8 ({where}): {m.describe(budget)}"
            + ("" if held else " - over budget"))
        return m

    start = predicted_prefix(ordered, B.allowed_mse(budget, crops))
    count = bisect_prefix(len(groups) - 1, start, lambda k: probe(k, crops, False).holds(budget))
    for _ in range(FINAL_TRIES):
        if count < 1:
            break
        m = probe(count, full, True)
        if m.holds(budget):
            result.float_groups = [e.group.name for e in ordered[count:]]
            path = tmp / "mixed.onnx"
            onnx.save(keep_float(qproto, fproto, [c for e in ordered[count:] for c in e.group.convs]), str(path))
            return m, path, result
        # shorten the prefix by the factor the full set missed by, at least one group
        target = cumulative[count - 1] * B.allowed_mse(budget, full) / max(m.parity_mse, 1e-12)
        count = min(count - 1, sum(c <= target for c in cumulative))
    raise ParityError(f"int8 cannot meet the budget ({budget.describe()}) with any group of convs in int8; "
                      f"tried {log.describe(budget)}; no model written")


def mse_to_db(mse: float) -> float:
    """Parity PSNR (Y, 8-bit peak) of a squared error; 99 dB for none, as budget.measure caps it."""
    return min(10 * math.log10(255.0**2 / mse), 99.0) if mse > 0 else 99.0
