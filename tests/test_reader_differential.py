"""Differential tests of the pickle reader (``pickleguard._core.delimit``).

``delimit(data)`` says where the one pickle at the start of ``data`` ends, and how
many out-of-band buffers it consumes, without running it. It is compared with three
referees from CPython:

* ``pickletools.genops``, which walks opcodes and arguments but ignores framing;
* ``pickle.Unpickler`` (the C unpickler), the one pickleguard guards, which reads a
  file through ``read``/``readline`` and leaves it positioned just after STOP;
* ``pickle._Unpickler`` (the pure-Python unpickler), whose ``_Unframer`` defines the
  framing rules the reader follows.

Valid pickles must be delimited exactly as all three see them. Arbitrary bytes must
never crash the process: ``delimit`` returns, or raises ``UnpicklingError``,
``EOFError`` or ``OverflowError``; and whenever it returns, the referees agree.

Where the referees legitimately disagree with ``delimit`` (only ever on malformed or
hand-framed input, never on what ``pickle.dumps`` writes):

* genops checks opcode arguments that ``delimit`` deliberately does not interpret
  (``INT`` lines must be decimal, ``STRING`` lines quoted, ``*UNICODE`` arguments
  must decode, ...), so genops may raise where ``delimit`` returns. When genops
  does return, its end must be ``delimit``'s.
* genops ignores framing, so it may find STOP in a stream that ``delimit`` rejects
  for a framing error. That stream must then contain a FRAME opcode.
* The pure-Python unframer accepts two framings that ``delimit`` rejects:
  a FRAME that extends past STOP (rejected on purpose: the bytes after STOP would be
  verified with this pickle but consumed by the next ``load()``), and a last FRAME
  that claims more bytes than the input holds but whose STOP fits in what there is
  (``_Unframer.load_frame`` keeps the short read; the C unpickler, like ``delimit``,
  raises "pickle data was truncated").
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import pickletools
import struct
import warnings

import pytest
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st

from pickleguard._core import delimit

# ---------------------------------------------------------------------------
# Hypothesis profiles, selected by HYPOTHESIS_PROFILE: "dev" (default, 200 examples)
# or "ci" (1000), neither with a deadline. tests/conftest.py belongs to the other
# test modules, so they are registered here, under names of their own, and applied
# to this module's tests only: importing it changes no other module's settings.

_MAX_EXAMPLES = {"dev": 200, "ci": 1000}
for _name, _count in _MAX_EXAMPLES.items():
    settings.register_profile(f"reader-{_name}", max_examples=_count, deadline=None)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
READER_SETTINGS = (
    settings.get_profile(f"reader-{_PROFILE}")
    if _PROFILE in _MAX_EXAMPLES
    else settings(deadline=None)
)

DELIMIT_ERRORS = (pickle.UnpicklingError, EOFError, OverflowError)
PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
FRAME = pickle.FRAME


# ---------------------------------------------------------------------------
# Picklers and referees.


def dumps_c(obj, protocol, **kwargs):
    return pickle.dumps(obj, protocol, **kwargs)


def dumps_py(obj, protocol, **kwargs):
    f = io.BytesIO()
    pickle._Pickler(f, protocol, **kwargs).dump(obj)
    return f.getvalue()


PICKLERS = {"C": dumps_c, "python": dumps_py}


def genops_summary(data):
    """``(end, next_buffers, opcode names)`` as genops sees ``data``, or None if
    genops rejects it. ``end`` is the offset just past STOP."""
    names = []
    end = None
    with warnings.catch_warnings():
        # codecs.escape_decode warns about odd escapes in STRING lines.
        warnings.simplefilter("ignore")
        try:
            for opcode, _arg, pos in pickletools.genops(data):
                names.append(opcode.name)
                end = pos + 1
        except ValueError:
            return None
    return end, names.count("NEXT_BUFFER"), names


class InertUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with every opcode that can run code refused.

    Used as the framing referee on arbitrary bytes. Only a successful load is
    compared, so refusing an opcode early (before its argument is read) is fine.
    The C unpickler is not run on arbitrary bytes: it sizes its memo array from
    whatever index a PUT or LONG_BINPUT names.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def _refuse(self):
        raise pickle.UnpicklingError("refused by the test")

    for _op in (
        pickle.GLOBAL,
        pickle.INST,
        pickle.STACK_GLOBAL,
        pickle.REDUCE,
        pickle.BUILD,
        pickle.OBJ,
        pickle.NEWOBJ,
        pickle.NEWOBJ_EX,
        pickle.EXT1,
        pickle.EXT2,
        pickle.EXT4,
        pickle.PERSID,
        pickle.BINPERSID,
    ):
        dispatch[_op[0]] = _refuse

    def _load_bytearray8(self):
        # The original allocates the claimed length before reading; refuse lying
        # claims instead of allocating them.
        (length,) = struct.unpack("<Q", self.read(8))
        if length > 1 << 24:
            raise pickle.UnpicklingError("refused by the test: BYTEARRAY8 too long")
        buf = bytearray(length)
        self.readinto(buf)
        self.append(buf)

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    del _op


class OwnPicklesUnpickler(pickle._Unpickler):
    """The pure-Python unpickler for streams whose opcodes are our own pickles'
    (only the framing differs), which need these globals for bytearray and sets."""

    ALLOWED = {
        ("builtins", "bytearray"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused by the test: {module}.{name}")
        return super().find_class(module, name)


def unframer_consumed(data, unpickler_cls=InertUnpickler):
    """How far the pure-Python unpickler reads ``data`` in a successful load, or
    None if the load fails for any reason."""
    f = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            unpickler_cls(f).load()
        except Exception:  # any failure means "not accepted"
            return None
    return f.tell()


def assert_prefixes_incomplete(pickled, n):
    """Every proper prefix of a delimited pickle is incomplete."""
    for k in {0, n // 2, n - 1}:
        with pytest.raises((pickle.UnpicklingError, EOFError)):
            delimit(pickled[:k])


def check_valid(pickled, trailing=b"", buffers=()):
    """``pickled`` is exactly one pickle written by a CPython pickler."""
    data = pickled + trailing
    summary = genops_summary(data)
    assert summary is not None
    end, next_buffers, _names = summary
    assert end == len(pickled)

    assert delimit(data) == (end, next_buffers)
    assert delimit(pickled) == (end, next_buffers)
    assert delimit(bytearray(data)) == (end, next_buffers)
    assert_prefixes_incomplete(pickled, end)

    f = io.BytesIO(data)
    pickle.Unpickler(f, buffers=buffers).load()
    assert f.tell() == end, "C unpickler"

    f = io.BytesIO(data)
    pickle._Unpickler(f, buffers=buffers).load()
    assert f.tell() == end, "pure-Python unpickler"
    return end, next_buffers


def check_arbitrary(data):
    """``data`` is any bytes. Returns delimit's result, or None if it raised."""
    try:
        result = delimit(data)
    except DELIMIT_ERRORS as exc:
        event(f"delimit raised {type(exc).__name__}: {str(exc).split(',')[0][:40]}")
        check_rejection(data, exc)
        return None
    event("delimit returned")

    n, next_buffers = result
    assert 0 < n <= len(data)
    assert data[n - 1 : n] == b"."
    # The verdict depends on data[:n] alone.
    assert delimit(data[:n]) == result
    assert_prefixes_incomplete(data, n)

    summary = genops_summary(data[:n])
    note(f"genops on data[:n]: {summary}")
    if summary is not None:
        assert summary[:2] == (n, next_buffers)
    else:
        # genops checks an argument delimit does not interpret (see the module doc).
        event("genops rejected what delimit delimited")

    consumed = unframer_consumed(data)
    if consumed is not None:
        event("the pure-Python unpickler loaded it too")
        assert consumed == n, "pure-Python unframer"
    return result


def check_rejection(data, exc):
    """``delimit`` rejected ``data``: no referee may find a pickle in it, except
    where the module doc says they legitimately disagree."""
    summary = genops_summary(data)
    if summary is not None:
        # genops ignores frames: it accepts only framed streams that delimit rejects.
        assert "FRAME" in summary[2], f"genops found STOP at {summary[0]}; delimit: {exc!r}"

    consumed = unframer_consumed(data)
    if consumed is not None:
        event("rejected, but the pure-Python unpickler loaded it")
        message = str(exc)
        assert isinstance(exc, pickle.UnpicklingError), repr(exc)
        if "extends past STOP" in message:
            assert summary is None or consumed > summary[0]
        elif "truncated" in message:
            # The last frame claimed more than there is; _Unframer kept the short read.
            assert consumed == len(data)
        else:
            pytest.fail(f"the pure-Python unpickler read {consumed} bytes; delimit: {exc!r}")


# ---------------------------------------------------------------------------
# Objects to pickle.

# Edges of BININT1, BININT2, BININT, LONG1 and 64-bit values.
BOUNDARY_INTS = [0, 1, -1, 255, 256, 65_535, 65_536, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]
BOUNDARY_INTS += [2**63, -(2**63), 2**64]
# Around the SHORT_* length limit and the 64 KiB frame target of both picklers.
SIZES = [255, 256, 65_536, 70_000]


def _huge_int(bits, low, negative):
    value = (1 << bits) + low
    return -value if negative else value


ints = st.one_of(
    st.integers(),
    st.sampled_from(BOUNDARY_INTS),
    # LONG1 holds 255 bytes of two's complement, -(2**2039) to 2**2039 - 1; just
    # past either end is LONG4.
    st.builds(
        lambda delta, sign: sign * ((1 << 2039) + delta),
        st.sampled_from([-1, 0, 1]),
        st.sampled_from([1, -1]),
    ),
    # LONG4 territory. At most 12000 bits, so protocols 0 and 1 (which write the
    # decimal repr) stay under the default 4300-digit str conversion limit.
    st.builds(_huge_int, st.integers(0, 12_000), st.integers(0, 2**64), st.booleans()),
)
# Characters that protocol 0's raw-unicode-escape lines must escape, or that look
# like opcodes, plus lone surrogates (BINUNICODE uses surrogatepass).
awkward_chars = st.one_of(
    st.sampled_from("\n\r\\\x00\x1a'\".()\x80\xff\u20ac\U0001f600"),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.characters(),
)
texts = st.one_of(
    st.text(),
    st.text(awkward_chars),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "\n", "\u20ac"]), st.sampled_from(SIZES)),
)
blobs = st.one_of(
    st.binary(),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.sampled_from(SIZES)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(),
    texts,
    blobs,
    blobs.map(bytearray),
)
hashables = st.recursive(
    st.one_of(
        st.none(), st.booleans(), ints, st.floats(), st.text(max_size=8), st.binary(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
    ),
    max_leaves=6,
)


def self_referencing(x):
    """Cycles through a list, a dict and a tuple: memo GETs, and for the tuple the
    POP/POP_MARK dance of a tuple met again while it is being pickled."""
    outer = [x]
    outer.append(outer)
    holder = []
    tup = (holder, x)
    holder.append(tup)
    cyclic_dict = {"x": x}
    cyclic_dict["self"] = cyclic_dict
    return [outer, tup, cyclic_dict]


def containers(inner):
    return st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(hashables, inner, max_size=6),
        st.sets(hashables, max_size=6),
        st.frozensets(hashables, max_size=6),
        inner.map(lambda x: [x, x, (x,)]),  # shared references: memo GETs
        inner.map(self_referencing),
    )


objects = st.recursive(scalars, containers, max_leaves=20)

# Shapes worth checking every run, whatever hypothesis draws.
KNOWN_SHAPES = {
    "multi-frame with a large payload outside frames": [
        list(range(3000)),
        b"x" * 70_000,
        "y" * 100,
        list(range(20_000)),
        bytearray(b"z" * 70_000),
    ],
    "over 256 memo entries (LONG_BINPUT, LONG_BINGET)": [str(i) for i in range(300)] * 2,
    "cycles": self_referencing([1, "two", b"three"]),
    "empties": [None, True, False, 0, 0.0, "", b"", bytearray(), [], (), {}, set(), frozenset()],
    "huge ints": [2**12_000 + 1, -(2**8_000), 2**2040 - 1],
    "nested": [[[[[[[[[[["deep"]]]]]]]]]]],
}


@pytest.mark.parametrize("pickler", sorted(PICKLERS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", sorted(KNOWN_SHAPES))
def test_known_shapes_are_delimited_exactly(shape, protocol, pickler):
    pickled = PICKLERS[pickler](KNOWN_SHAPES[shape], protocol)
    check_valid(pickled, b".\x80\x05\x95 trailing")


# ---------------------------------------------------------------------------
# Valid pickles.

trailing_bytes = st.one_of(
    st.binary(max_size=40),
    # Bytes that continue a pickle plausibly: STOP, FRAME, PROTO, a newline.
    st.lists(st.sampled_from([b".", FRAME, b"\x80\x05", b"\n", b"N", b"\x00" * 8]), max_size=4).map(
        b"".join
    ),
)


@READER_SETTINGS
@given(obj=objects, trailing=trailing_bytes)
def test_valid_pickles_every_protocol_and_pickler(obj, trailing):
    for protocol, (name, dumps) in itertools.product(PROTOCOLS, PICKLERS.items()):
        note(f"protocol {protocol}, {name} pickler")
        check_valid(dumps(obj, protocol), trailing)


picklebuffers = st.builds(
    lambda payload, readonly: pickle.PickleBuffer(
        bytes(payload) if readonly else bytearray(payload)
    ),
    st.binary(max_size=64),
    st.booleans(),
)
buffer_objects = st.recursive(
    st.one_of(picklebuffers, picklebuffers, st.none(), ints, st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=5),
        inner.map(lambda x: [x, x]),
    ),
    max_leaves=15,
)


@READER_SETTINGS
@given(
    obj=buffer_objects,
    in_band=st.lists(st.booleans(), min_size=1, max_size=8),
    trailing=trailing_bytes,
)
@example(obj=[pickle.PickleBuffer(bytearray(b"abc"))] * 3, in_band=[False], trailing=b"")
def test_out_of_band_buffers_are_counted(obj, in_band, trailing):
    for name, dumps in PICKLERS.items():
        note(f"{name} pickler")
        buffers = []
        keep_in_band = itertools.cycle(in_band)

        def callback(buf, buffers=buffers, keep_in_band=keep_in_band, name=name):
            # A true result serializes the buffer in band; a false one emits NEXT_BUFFER.
            in_band = next(keep_in_band)
            # pickle._Pickler memoizes the bytes copy of an in-band buffer, and trips
            # its own assertion when that copy is a cached singleton (b"" or one byte)
            # met twice. A CPython quirk, not the reader's: keep such buffers out of band.
            if in_band and not (name == "python" and buf.raw().nbytes < 2):
                return True
            buffers.append(buf)
            return False

        pickled = dumps(obj, 5, buffer_callback=callback)
        end, next_buffers = check_valid(pickled, trailing, buffers=buffers)
        assert next_buffers == len(buffers)


# ---------------------------------------------------------------------------
# Framing, with the pure-Python unframer as the referee.


def read_units(pickled):
    """Split ``pickled`` into its primitive reads (opcode byte, fixed argument,
    length prefix, payload, line) and group them by opcode: a list, per opcode, of
    byte strings. FRAME opcodes are dropped."""
    ops = []
    positions = [(op, pos) for op, _arg, pos in pickletools.genops(pickled)]
    ends = [pos for _op, pos in positions[1:]] + [len(pickled)]
    for (op, pos), end in zip(positions, ends):
        if op.name == "FRAME":
            continue
        raw = pickled[pos:end]
        units = [raw[:1]]
        n = op.arg.n if op.arg is not None else None
        if n is None:
            pass
        elif n > 0:
            units.append(raw[1:])
        elif n == pickletools.UP_TO_NEWLINE:
            # One line, or two for GLOBAL and INST; each read ends at b"\n".
            units.extend(line + b"\n" for line in raw[1:-1].split(b"\n"))
        else:
            width = {
                pickletools.TAKEN_FROM_ARGUMENT1: 1,
                pickletools.TAKEN_FROM_ARGUMENT4: 4,
                pickletools.TAKEN_FROM_ARGUMENT4U: 4,
                pickletools.TAKEN_FROM_ARGUMENT8U: 8,
            }[n]
            units.extend([raw[1 : 1 + width], raw[1 + width :]])
        assert b"".join(units) == raw
        ops.append(units)
    return ops


@st.composite
def reframed(draw, ops):
    """Insert FRAME opcodes between opcodes, each claiming some length: up to a
    read boundary (valid), or any length (often not).

    What is drawn does not depend on `ops`: the same pickle can come out with more
    or fewer memo references on a replay (hypothesis may or may not share equal
    objects), and draws that depended on its length would make the test flaky."""
    specs = draw(
        st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 2), st.integers(0, 12)),
            max_size=6,
        )
    )
    starts = sorted({int(position * len(ops)) for position, _, _ in specs})
    choices = {int(position * len(ops)): (kind, extra) for position, kind, extra in specs}
    out = bytearray()
    cursor = 0
    for start, following in zip(starts, starts[1:] + [len(ops)]):
        for units in ops[cursor:start]:
            out += b"".join(units)
        units = [u for op_units in ops[start:following] for u in op_units]
        boundaries = list(itertools.accumulate([0] + [len(u) for u in units]))
        kind, extra = choices[start]
        if kind == 0:
            length = boundaries[-1]
        elif kind == 1:
            length = boundaries[extra % len(boundaries)]
        else:
            length = extra * (boundaries[-1] + 12) // 12
        out += FRAME + struct.pack("<Q", length) + b"".join(units)
        cursor = following
    for units in ops[cursor:]:
        out += b"".join(units)
    return bytes(out), len(out)


@READER_SETTINGS
@given(obj=objects, protocol=st.sampled_from([4, 5]), data=st.data())
def test_framing_follows_the_pure_python_unframer(obj, protocol, data):
    ops = read_units(dumps_c(obj, protocol))
    framed, stop_end = data.draw(reframed(ops), label="reframed")
    trailing = data.draw(trailing_bytes, label="trailing")
    stream = framed + trailing

    consumed = unframer_consumed(stream, OwnPicklesUnpickler)
    note(f"pure-Python unpickler consumed: {consumed}; STOP ends at {stop_end}")
    try:
        result = delimit(stream)
    except DELIMIT_ERRORS as exc:
        event(f"unframer {'rejected' if consumed is None else 'accepted'}, delimit rejected")
        if consumed is None:
            return  # both reject it
        message = str(exc)
        if consumed > stop_end and "extends past STOP" in message:
            return  # deliberate: the frame holding STOP goes on past it
        # _Unframer keeps a short read of a last frame that claims too much.
        assert "truncated" in message and consumed == len(stream), message
    else:
        event("both accepted")
        # delimit accepts no framing the unframer rejects, and agrees where STOP is.
        assert consumed == stop_end
        assert result == (stop_end, 0)


# ---------------------------------------------------------------------------
# Hand-built opcode sequences: any order of opcodes, with well-formed arguments.

# Line arguments genops accepts, some containing bytes that look like opcodes.
LINE_ARGS = {
    "INT": [b"0", b"1", b"00", b"01", b"-7", b"123456789012345678901234567890"],
    "LONG": [b"0L", b"-12L", b"99999999999999999999L", b"5"],
    "FLOAT": [b"0.5", b"-1e300", b"nan", b"inf"],
    "STRING": [b"''", b"'a.b('", b'"x\\ny"'],
    "UNICODE": [b"", b"abc", b"\\u20ac.", b"\xc3\xa9("],
    "GET": [b"0", b"12"],
    "PUT": [b"0", b"4294967296"],
    "PERSID": [b"pid", b".", b""],
    "GLOBAL": [b"os\nsystem", b"builtins\n."],
    "INST": [b"a.b\nc", b"(\n)"],
}
WIDTHS = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 255),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 300),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 300),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 300),
}
SOUP_OPCODES = [op for op in pickletools.opcodes if op.name not in ("STOP", "FRAME")]


@st.composite
def opcode_token(draw):
    """One opcode and its argument, as the list of its primitive reads."""
    op = draw(st.sampled_from(SOUP_OPCODES))
    code = op.code.encode("latin-1")
    n = op.arg.n if op.arg is not None else 0
    if op.arg is None:
        return op.name, [code]
    if n > 0:
        return op.name, [code, draw(st.binary(min_size=n, max_size=n))]
    if n == pickletools.UP_TO_NEWLINE:
        line = draw(st.sampled_from(LINE_ARGS[op.name]))
        return op.name, [code] + [part + b"\n" for part in line.split(b"\n")]
    fmt, limit = WIDTHS[n]
    if "unicode" in op.arg.name:
        payload = draw(st.text(max_size=limit // 4)).encode("utf-8")
    else:
        payload = draw(st.binary(max_size=limit))
    return op.name, [code, struct.pack(fmt, len(payload)), payload]


@st.composite
def opcode_soups(draw):
    """A well-formed stream of random opcodes ending in STOP, with frames that obey
    the unframer: each starts at an opcode and ends at a read boundary no later than
    the next FRAME. Returns the bytes and the number of NEXT_BUFFER opcodes."""
    tokens = draw(st.lists(opcode_token(), max_size=30))
    next_buffers = sum(name == "NEXT_BUFFER" for name, _ in tokens)
    ops = [units for _name, units in tokens] + [[b"."]]
    starts = sorted(draw(st.sets(st.integers(0, len(ops) - 1), max_size=5)))
    out = bytearray()
    cursor = 0
    for start, following in zip(starts, starts[1:] + [len(ops)]):
        for units in ops[cursor:start]:
            out += b"".join(units)
        units = [u for op_units in ops[start:following] for u in op_units]
        boundaries = list(itertools.accumulate([0] + [len(u) for u in units]))
        length = draw(st.one_of(st.just(boundaries[-1]), st.sampled_from(boundaries)))
        out += FRAME + struct.pack("<Q", length) + b"".join(units)
        cursor = following
    for units in ops[cursor:]:
        out += b"".join(units)
    return bytes(out), next_buffers


@READER_SETTINGS
@given(soup=opcode_soups(), trailing=trailing_bytes)
@example(soup=(b"\x95\x00\x00\x00\x00\x00\x00\x00\x00N.", 0), trailing=b"")
@example(soup=(b"C\x03a.\n\x95\x01\x00\x00\x00\x00\x00\x00\x00.", 0), trailing=b".")
def test_hand_built_opcode_sequences(soup, trailing):
    pickled, next_buffers = soup
    data = pickled + trailing
    assert genops_summary(data)[:2] == (len(pickled), next_buffers)
    assert delimit(data) == (len(pickled), next_buffers)
    check_arbitrary(data)


# ---------------------------------------------------------------------------
# Arbitrary and corrupted bytes.


@READER_SETTINGS
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"\x95\xff\xff\xff\xff\xff\xff\xff\xff")
@example(data=b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f")
@example(data=b"\x96\xff\xff\xff\xff\xff\xff\xff\x0f")
@example(data=b"T\xff\xff\xff\xff")
@example(data=b"\x95\x03\x00\x00\x00\x00\x00\x00\x00N.N")
@example(data=b"\x95\x09\x00\x00\x00\x00\x00\x00\x00N.")
def test_random_bytes_never_crash(data):
    check_arbitrary(data)


@READER_SETTINGS
@given(
    prefix=st.sampled_from([b"\x80\x02", b"\x80\x04", b"\x80\x05\x95\x20" + b"\x00" * 7]),
    data=st.binary(min_size=1, max_size=300),
)
def test_random_bytes_after_a_header_never_crash(prefix, data):
    check_arbitrary(prefix + data)


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "replace"]),
        st.integers(0, 2**32),
        st.one_of(
            st.integers(1, 255),
            # Bytes with a meaning to the reader.
            st.sampled_from(list(b".\n(\x95\x80\x00\xff") + [pickle.BYTEARRAY8[0]]),
        ),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data, edits):
    data = bytearray(data)
    for kind, index, value in edits:
        if kind == "insert":
            data.insert(index % (len(data) + 1), value)
        elif not data:
            continue
        elif kind == "flip":
            data[index % len(data)] ^= value
        elif kind == "delete":
            del data[index % len(data)]
        else:
            data[index % len(data)] = value
    return bytes(data)


@READER_SETTINGS
@given(
    obj=objects,
    protocol=st.sampled_from(PROTOCOLS),
    pickler=st.sampled_from(sorted(PICKLERS)),
    edits=mutations,
    trailing=trailing_bytes,
)
def test_mutated_pickles_never_crash(obj, protocol, pickler, edits, trailing):
    pickled = PICKLERS[pickler](obj, protocol) + trailing
    check_arbitrary(mutate(pickled, edits))


@READER_SETTINGS
@given(soup=opcode_soups(), edits=mutations, trailing=trailing_bytes)
def test_mutated_opcode_sequences_never_crash(soup, edits, trailing):
    check_arbitrary(mutate(soup[0] + trailing, edits))
