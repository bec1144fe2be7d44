"""MsgpackSerializer.loads on hostile bytes: a value or an error, never a crash.

Whatever is stored under a key reaches ``loads``: corrupt values, values of
another format, values written by someone else.  A crash there (format
version 1 overflowed the C stack on a tuple nested 200 deep) would take down
every process that reads the key, so these payloads are decoded in a
subprocess, whose exit status shows a crash that would otherwise kill the test
run.  The subprocess also decodes every payload in a thread with a 256 KiB
stack: decoding must not recurse in C however deeply the payload nests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FUZZ = textwrap.dedent(
    r"""
    import struct
    import sys
    import threading

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from loadercache.backends.serializers import (
        DeserializationError,
        MsgpackSerializer,
    )

    serializer = MsgpackSerializer()
    serializer.register(complex, 40, lambda c: [c.real, c.imag], lambda p: complex(*p))
    VERSION = bytes([MsgpackSerializer.FORMAT_VERSION])
    decoded = [0]


    def decode(payload):
        try:
            serializer.loads(payload)
        except DeserializationError:
            pass
        decoded[0] += 1


    def array(items):
        n = len(items)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(items)


    def mapping(items):
        n = len(items) // 2
        return bytes([0x80 | n]) + b"".join(items[: 2 * n])


    def marker(code):
        return b"\xc7\x00" + struct.pack(">b", code)


    def ext(code, data):
        return b"\xc7" + bytes([len(data)]) + struct.pack(">b", code) + data


    codes = st.integers(-128, 127)
    scalars = st.one_of(
        st.binary(max_size=12),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: b"\xd3" + struct.pack(">q", i)),
        st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\x00", b"\xff", b"\xa1a"]),
        st.builds(ext, codes, st.binary(max_size=20)),
        st.builds(marker, codes),
        # msgpack's Timestamp extension, in its three sizes.
        st.sampled_from(
            [
                b"\xd6\xff" + bytes(4),
                b"\xd7\xff" + bytes(8),
                b"\xc7\x0c\xff" + bytes(12),
            ]
        ),
    )
    trees = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6).map(array),
            st.lists(inner, max_size=6).map(mapping),
            st.tuples(codes, st.lists(inner, max_size=5)).map(
                lambda pair: array([marker(pair[0]), *pair[1]])
            ),
        ),
        max_leaves=40,
    )
    # Nesting far past any limit: arrays, maps and container markers.
    chains = st.tuples(
        st.integers(0, 5000),
        st.sampled_from(
            [b"\x91", b"\x81\xa1k", b"\x92\xc7\x00\x01", b"\x92\xc7\x00\x03"]
        ),
    ).map(lambda pair: pair[1] * pair[0] + b"\x01")


    @settings(
        max_examples=int(sys.argv[1]),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=64), trees, chains), st.booleans())
    def fuzz(body, versioned):
        decode(VERSION + body if versioned else body)


    def nested_ext(code, depth):
        # Extensions whose data is another payload: the shape of format
        # version 1's tuples and sets, which recursed once per level.
        body = b"\x01"
        for _ in range(depth):
            header = b"\xc9" + struct.pack(">Ib", len(body), code)
            body = header + body
        return body


    def nested_value(depth, wrap):
        value = 1
        for _ in range(depth):
            value = wrap(value)
        return value


    def main():
        fuzz()
        # What the serializer itself writes, nested deep (format version 1
        # crashed on a tuple 200 deep), then hostile chains far deeper, once
        # here and once in a thread whose stack is a small fraction of the
        # main thread's.
        deep = []
        for depth in (200, 1000):
            for wrap in (lambda v: (v,), lambda v: frozenset({v}), lambda v: ({1}, v)):
                deep.append(serializer.dumps(nested_value(depth, wrap)))
        assert all(serializer.loads(payload) for payload in deep)
        bodies = [b"\x92\xc7\x00\x01" * depth + b"\x01" for depth in (1025, 10**5)]
        bodies += [b"\x91" * 10**6 + b"\x01", b"\x92\xc7\x00\x02\x81" * 3000 + b"\x01"]
        bodies += [nested_ext(code, 300) for code in (1, 2, 3, 40)]
        deep += [VERSION + body for body in bodies]
        for payload in deep:
            decode(payload)
        threading.stack_size(256 * 1024)
        worker = threading.Thread(target=lambda: [decode(p) for p in deep])
        worker.start()
        worker.join()
        print(f"decoded {decoded[0]} payloads")


    main()
    """
)


def test_loads_never_crashes_on_hostile_payloads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FUZZ, "3000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"the fuzzing subprocess died with status {done.returncode}:\n"
        f"{done.stdout}\n{done.stderr}"
    )
    assert "decoded" in done.stdout, done.stdout
