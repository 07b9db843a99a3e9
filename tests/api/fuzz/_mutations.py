"""Hypothesis strategies that damage a valid delivery, in JSON or msgpack wire form.

A mutation is drawn as a name plus its parameters and applied to a deep copy of a
wire-form delivery. Semantic mutations (class index out of range, k < 3, mismatched
lengths, unknown task or kind, wrong seq...) work on JSON-form lists and run first; the
body is then optionally turned into the msgpack form (raw little-endian arrays) and
structural mutations (drop, replace or add any field) run on that. Bodies are encoded
last, with byte-level damage (truncation, flipped bytes) drawn on top.

Values that once found bugs are drawn on purpose: in-range steps far beyond
``total_steps`` (up to 2**53), subnormal timestamps (rates that overflow), arrays with
more than 64 dimensions or an infinite shape, and nesting deeper than Python's recursion
limit.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
from hypothesis import strategies as st

from client._wire import encode_array

BIG = "\u0000big\u0000"  # becomes the raw JSON number 1e999 (inf once parsed)
Path = tuple[Any, ...]
Draw = Callable[[st.SearchStrategy[Any]], Any]

# Large steps inside [0, 2**53] (work must not grow with them) and outside it.
OUT_OF_RANGE_INTS = [-1, -7, 10**6, 2**40, 2**53 - 1, 2**53, 2**53 + 1, 2**62 + 1, 2**63, 2**64 - 1, 10**30,
                     -(10**30)]
# Subnormals included: a near-zero time span must not make a rate inf.
SAFE_FLOATS = st.floats(-1e6, 1e6, allow_nan=False)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from(OUT_OF_RANGE_INTS), SAFE_FLOATS,
    st.sampled_from([math.nan, math.inf, -math.inf, BIG]),
    st.text(max_size=6), st.sampled_from(["", "genus", "batch", "train", "1", "NaN", "a/b", "é"]),
)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)


# ---------------------------------------------------------------- paths in nested bodies


def paths(obj: Any, prefix: Path = ()) -> list[Path]:
    """Paths to every value below ``obj`` (long lists: their ends only)."""
    out: list[Path] = []
    if isinstance(obj, dict):
        items: list[tuple[Any, Any]] = list(obj.items())
    elif isinstance(obj, list):
        picks = range(len(obj)) if len(obj) <= 4 else [0, 1, len(obj) - 1]
        items = [(i, obj[i]) for i in picks]
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths(value, (*prefix, key)))
    return out


def at(body: Any, path: Path) -> Any:
    """The value at ``path``."""
    for step in path:
        body = body[step]
    return body


def parent(body: Any, path: Path) -> Any:
    """The container holding ``path``'s last step."""
    return at(body, path[:-1])


# ---------------------------------------------------------------- semantic mutations


def _events(body: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    events = body.get("events")
    if not isinstance(events, list):
        return []
    return [e for e in events if isinstance(e, dict) and (kind is None or e.get("kind") == kind)]


def _one(draw: Draw, items: list[Any]) -> Any:
    return draw(st.sampled_from(items)) if items else None


def class_out_of_range(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """A target or top-k class at num_classes, beyond it, or negative."""
    batch = _one(draw, _events(body, "batch"))
    if batch is None:
        return
    task = draw(st.sampled_from(sorted(tasks)))
    key = draw(st.sampled_from(["targets", "topk"]))
    bad = draw(st.sampled_from([tasks[task], tasks[task] + 1, -1, 2**31, -(2**31)]))
    rows = batch[key][task]
    i = draw(st.integers(0, len(rows) - 1))
    if key == "targets":
        rows[i] = bad
    else:
        rows[i][draw(st.integers(0, len(rows[i]) - 1))] = bad


def topk_width(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """k < 3 (or > 100) for one task, or ragged rows."""
    batch = _one(draw, _events(body, "batch"))
    if batch is None:
        return
    task = draw(st.sampled_from(sorted(tasks)))
    rows = batch["topk"][task]
    k = draw(st.sampled_from([0, 1, 2, 101]))
    if draw(st.booleans()):
        batch["topk"][task] = [(r * 40)[:k] for r in rows]
    else:
        rows[0] = (rows[0] * 40)[:k]


def length_mismatch(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """One per-sample array one element longer or shorter than the batch."""
    batch = _one(draw, _events(body, "batch"))
    if batch is None:
        return
    task = draw(st.sampled_from(sorted(tasks)))
    where = draw(st.sampled_from(["targets", "topk", "sample_losses", "subsets", "sizes", "loss"]))
    grow = draw(st.booleans())
    if where in ("targets", "topk"):
        _resize(batch[where][task], grow)
    elif where == "sample_losses":
        batch["sample_losses"] = _resized(batch.get("sample_losses") or [0.5] * len(batch["targets"][task]), grow)
    elif where == "subsets":
        family = {"rarity": ["rare"] * len(batch["targets"][task])} if not batch.get("subsets") else batch["subsets"]
        batch["subsets"] = {f: _resized(list(v), grow) for f, v in family.items()}
    elif where == "sizes":
        batch["sizes"] = [len(batch["targets"][task]) + (1 if grow else -1), 1]
    else:
        batch["loss"] = [1.0, 2.0]


def _resize(items: list[Any], grow: bool) -> None:
    if grow:
        items.append(copy.deepcopy(items[0]))
    elif items:
        items.pop()


def _resized(items: list[Any], grow: bool) -> list[Any]:
    _resize(items, grow)
    return items


def unknown_task(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """A task the run does not have (renamed, added, or missing in targets/topk/task_losses)."""
    batch = _one(draw, _events(body, "batch"))
    if batch is None:
        return
    task = draw(st.sampled_from(sorted(tasks)))
    how = draw(st.sampled_from(["rename", "add", "drop", "loss", "bad_name"]))
    keys = {"rename": ["targets", "topk"], "add": ["targets", "topk"], "drop": ["targets", "topk"]}.get(how, [])
    for key in keys:
        value = batch[key].pop(task) if how != "add" else copy.deepcopy(batch[key][task])
        if how != "drop":
            batch[key]["nope"] = value
    if how == "loss":
        batch.setdefault("task_losses", {})["nope"] = 1.0
    elif how == "bad_name":
        batch["targets"]["bad name/with space"] = batch["targets"].pop(task)


def unknown_kind(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """An event kind the wire format does not have."""
    event = _one(draw, _events(body))
    if event is not None:
        event["kind"] = draw(st.one_of(st.sampled_from(["Batch", "scalar", "", "epoch_end", "lr "]), JUNK))


def bad_seq(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """A gap, a negative or huge seq, or the wrong type."""
    seq = body["seq"]
    body["seq"] = draw(st.sampled_from([seq + 1, seq + 9, -1, 2**62 + 1, str(seq), float(seq), None, True, BIG]))


def bad_session(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """An unknown, empty, overlong or mistyped session."""
    body["session"] = draw(st.sampled_from(["ghost", "", "s" * 65, 5, None, ["x"], {"id": "x"}]))


def bad_number(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """NaN, inf, 1e999 or a wrong type in a step, epoch, time, loss or value."""
    event = _one(draw, _events(body))
    if event is None:
        return
    keys = [k for k in ("step", "epoch", "time", "through_step", "loss", "task_losses", "values", "sample_losses")
            if k in event]
    if not keys:
        return
    key = draw(st.sampled_from(keys))
    bad = draw(st.sampled_from([math.nan, math.inf, -math.inf, BIG, -1, 2**53 + 1, 1.5, "3", True, None]))
    if isinstance(event[key], dict) and event[key]:
        event[key][draw(st.sampled_from(sorted(event[key])))] = bad
    elif isinstance(event[key], list) and event[key]:
        event[key][0] = bad
    else:
        event[key] = bad


def bad_scalars(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """Empty values, bad names, or higher_is_better misused."""
    event = _one(draw, [e for e in _events(body) if e.get("kind") in ("lr", "pipeline", "gradnorm", "custom")])
    if event is None:
        return
    how = draw(st.sampled_from(["empty", "name", "hib_kind", "hib_type", "hib_orphan"]))
    if how == "empty":
        event["values"] = {}
    elif how == "name":
        event["values"][draw(st.sampled_from(["", "a b", "/x", "x" * 201, "é"]))] = 1.0
    elif how == "hib_kind":
        event["higher_is_better"] = {next(iter(event["values"])): True}
        event["kind"] = "lr"
    elif how == "hib_type":
        event["higher_is_better"] = {next(iter(event["values"])): "yes"}
    else:
        event["higher_is_better"] = {"not_a_value": True}


def bad_container(body: dict[str, Any], draw: Draw, tasks: dict[str, int]) -> None:
    """A list where an object belongs and the other way round; the reserved subset family."""
    how = draw(st.sampled_from(["events", "targets", "topk", "subsets", "null_family", "extra"]))
    batch = _one(draw, _events(body, "batch"))
    if how == "events":
        body["events"] = draw(st.sampled_from([{}, "x", None, [1, 2], [[]], 3]))
    elif how == "extra":
        body[draw(st.sampled_from(["extra", "Seq", "events2"]))] = 1
    elif batch is not None and how == "null_family":
        batch["subsets"] = {"null": ["x"] * len(next(iter(batch["targets"].values())))}
    elif batch is not None:
        batch[how] = draw(st.sampled_from([[], "abc", 1, None, {}, [[1, 2, 3]]]))


SEMANTIC = [class_out_of_range, topk_width, length_mismatch, unknown_task, unknown_kind, bad_seq,
            bad_session, bad_number, bad_scalars, bad_container]


# ---------------------------------------------------------------- structural mutations

# Finite and at most 64-d: an infinite or 65-d shape is a 500 (reported).
SHAPES: list[Any] = [[], [0], [-1], [2**40], [1.5], [math.nan], [math.inf], "1", None, [1] * 64, [1] * 65,
                     [2, -2], [2**62, 2**62]]
FILLABLE_SHAPES: list[list[int]] = [[], [0], [1], [5, 3], [1] * 64, [1] * 65, [5, 1, 3], [0, 5], [5, 0]]
DTYPES = ["<f8", "|b1", ">i8", "<U3", "O", "<c16", "V8", "i16", "", "<u8", "<m8", "<f2", "<i2"]


def drop_any(body: Any, draw: Draw) -> None:
    """Remove any field or element."""
    found = paths(body)
    if found:
        path = draw(st.sampled_from(found))
        del parent(body, path)[path[-1]]


def replace_any(body: Any, draw: Draw, binary: bool) -> None:
    """Replace any value with junk (bytes too, in msgpack)."""
    found = paths(body)
    if found:
        path = draw(st.sampled_from(found))
        junk = st.one_of(JUNK, st.binary(max_size=24)) if binary else JUNK
        parent(body, path)[path[-1]] = draw(junk)


def add_any(body: Any, draw: Draw, binary: bool) -> None:
    """Add a field to any object."""
    objects = [p for p in paths(body) if isinstance(at(body, p), dict)]
    target = at(body, draw(st.sampled_from(objects))) if objects else body
    target[draw(st.text(max_size=6))] = draw(JUNK)


def damage_array(body: Any, draw: Draw) -> None:
    """Break a binary array: its dtype, its shape, its data, or shape and data together."""
    arrays = [p for p in paths(body)
              if isinstance(at(body, p), dict) and {"dtype", "shape", "data"} <= set(at(body, p))]
    if not arrays:
        return
    array = at(body, draw(st.sampled_from(arrays)))
    how = draw(st.sampled_from(["dtype", "shape", "data", "consistent"]))
    if how == "dtype":
        array["dtype"] = draw(st.sampled_from(DTYPES))
    elif how == "shape":
        array["shape"] = draw(st.sampled_from(SHAPES))
    elif how == "data":
        data = array["data"]
        array["data"] = draw(st.sampled_from([data[:-1], data + b"\0", b"", "text", None]))
    else:  # a shape its data fills exactly, so decoding gets as far as the reshape
        shape = draw(st.sampled_from(FILLABLE_SHAPES))
        array["dtype"], array["shape"], array["data"] = "<i8", shape, b"\0" * (8 * math.prod(shape))


# ---------------------------------------------------------------- wire forms and encoding


def binarize(body: Any) -> Any:
    """The msgpack form: rectangular integer/float arrays become raw little-endian buffers."""
    for event in body.get("events") or []:
        if not isinstance(event, dict):
            continue
        for key in ("targets", "topk"):
            if isinstance(event.get(key), dict):
                event[key] = {t: _raw(v, np.int64) for t, v in event[key].items()}
        if "sample_losses" in event:
            event["sample_losses"] = _raw(event["sample_losses"], np.float64)
    return body


def _raw(value: Any, dtype: type) -> Any:
    flat = json.dumps(value, default=str)
    if "true" in flat or "false" in flat or '"' in flat:
        return value
    try:
        array: np.ndarray = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return value
    if dtype is np.int64 and "." in flat:
        return value
    return encode_array(array, binary=True)


def encode(body: Any, binary: bool) -> bytes:
    """JSON text (NaN/Infinity/1e999 literals kept) or msgpack (out-of-range ints clamped)."""
    if binary:
        return bytes(msgpack.packb(_for_msgpack(body), use_bin_type=True))
    text = json.dumps(body, allow_nan=True, separators=(",", ":"), default=repr)
    return text.replace(json.dumps(BIG), "1e999").encode()


def _for_msgpack(value: Any) -> Any:
    if isinstance(value, dict):
        return {_for_msgpack(k): _for_msgpack(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_msgpack(v) for v in value]
    if value == BIG:
        return math.inf
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-(2**63), min(2**64 - 1, value))
    return value


def damage_bytes(raw: bytes, draw: Draw, binary: bool) -> bytes:
    """Truncate, flip a byte, or add garbage (or leave the body as it is)."""
    hows = ["none"] * 12 + ["truncate", "append", "prepend", "garbage", "flip"]
    how = draw(st.sampled_from(hows))
    if how == "none" or not raw:
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
    extra: bytes = draw(st.binary(min_size=1, max_size=16))
    return {"append": raw + extra, "prepend": extra + raw}.get(how, extra)
