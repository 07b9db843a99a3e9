"""Issue 13, item 8: decoding a request takes at most ~2x its body, measured (tracemalloc, in a
fresh subprocess so nothing else allocates meanwhile) on the route's own decode function."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

MIB = 2**20

# Runs in a subprocess: builds a body, then measures the peak of the route's decode of it.
SCRIPT = textwrap.dedent("""
    import json, sys, tracemalloc
    import msgpack, numpy as np
    from client._wire import BatchEvent, MSGPACK_TYPE, JSON_TYPE, encode_event, pack_body
    from service.api.routes.ingest import decode_delivery as _decode
    from service.settings import Settings

    kind, size = sys.argv[1], int(sys.argv[2])
    settings = Settings(max_body_bytes=64 * 2**20, max_decoded_bytes=2 * size)
    rng = np.random.default_rng(0)
    tasks = [("t%d" % i, 1000) for i in range(3)]

    def batch(n):
        return BatchEvent(step=1, epoch=0, phase="train", time=1.0, sizes=[n],
                          targets={t: rng.integers(0, c, n) for t, c in tasks},
                          topk={t: rng.integers(0, c, (n, 3)) for t, c in tasks},
                          subsets={"fam": (["a", "b", "c"], rng.integers(0, 3, n))})

    def events_of(samples, binary):
        events, packed = [], 0
        while packed < size:
            events.append(encode_event(batch(samples), binary))
            packed += len(pack_body({"e": events[-1]}, True))
        return pack_body({"session": "s", "seq": 0, "events": events}, True)

    if kind == "binary":  # what the client sends: raw little-endian arrays
        raw, ctype = events_of(65536, True), MSGPACK_TYPE
    elif kind == "msgpack-lists":  # the same arrays as msgpack lists: ~10x in Python objects
        raw, ctype = events_of(8192, False), MSGPACK_TYPE
    else:  # json-dense
        raw, ctype = b'{"session": "s", "seq": 0, "events": [' + b"7," * (size // 2) + b"7]}", JSON_TYPE
    tracemalloc.start()
    try:
        _decode(raw, ctype, settings)
        outcome = "decoded"
    except Exception as exc:
        outcome = type(exc).__name__ + ": " + str(exc)[:200]
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"body": len(raw), "peak": peak, "outcome": outcome}))
""")


def _measure(kind: str, size: int) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, kind, str(size)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_binary_delivery_decodes_within_twice_its_body() -> None:
    result = _measure("binary", 6 * MIB)
    assert result["outcome"] == "decoded", result
    assert int(result["body"]) >= 6 * MIB  # type: ignore[call-overload]
    assert int(result["peak"]) <= 2 * int(result["body"]), result  # type: ignore[call-overload]


@pytest.mark.parametrize("kind", ["msgpack-lists", "json-dense"])
def test_a_body_that_would_decode_large_is_refused_before_it_is(kind: str) -> None:
    result = _measure(kind, 4 * MIB)
    assert str(result["outcome"]).startswith("DecodedTooLarge"), result
    assert "max_decoded_bytes" in str(result["outcome"])
    assert int(result["peak"]) <= 2 * int(result["body"]), result  # type: ignore[call-overload]
