"""Fuzz the container readers with hypothesis: mutated real files and random small inputs.

Properties, for every input:
* the readers raise nothing but the tool's own ``CkptError`` subclasses;
* each example takes bounded time (hypothesis ``deadline``) and bounded memory (tracemalloc peak);
* the CLI (``inspect``, ``diff``) prints either a result or exactly one ``error:`` line, never a
  traceback or an "internal error".

The seeds are real ``torch.save`` (protocols 2 and 4) and ``safetensors`` files built at import time.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

from ckpt_tool.errors import CkptError
from ckpt_tool.io.container import read_container

MAX_PEAK = 64 << 20  # bytes of Python allocations one example may cost (a 2 KB input!)


def _torch_bytes(protocol: int) -> bytes:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    sd = {"w": torch.randn(8, 4, generator=g), "b": torch.zeros(3, dtype=torch.bfloat16), "t": base.t(),
          "sl": base[1:3], "i": torch.arange(5)}
    buf = io.BytesIO()
    torch.save({"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
                "iter_num": 3}, buf, pickle_protocol=protocol)
    return buf.getvalue()


SEED_TORCH = {2: _torch_bytes(2), 4: _torch_bytes(4)}
SEED_ST = save_bytes({"a": torch.randn(4, 4), "b": torch.arange(6, dtype=torch.int32), "c": torch.zeros(0)},
                     metadata={"format": "pt"})


def _pickle_of(raw: bytes) -> tuple[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        return name, zf.read(name)


def _with_pickle(raw: bytes, pkl: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = pkl if item.filename.endswith("/data.pkl") else zin.read(item.filename)
            zout.writestr(item.filename, data)
    return out.getvalue()


# Opcode bytes and short sequences an attacker would try inside a pickle.
_OPCODES = sorted(set(b"()tRQNK\x85\x86\x87\x88\x89]}easlduq hrjXcC\x8c\x8a\x8b\x94\x95\x93\x81b01.2IpgGMJ\x8f\x90\x91\x96\x97"))
_NASTY = [b"r\xff\xff\xff\x7f", b"j\x00\x00\x00\x40", b"(" * 50, b"\x85" * 200, b"]" * 150 + b"a" * 149,
          b"p9999999999\n", b"\x8a\x40" + b"\x01" * 64, b"X\xff\xff\xff\x7f", b"\x95" + b"\xff" * 8,
          b"ctorch\nFloatStorage\n", b"cbuiltins\neval\n", b"b", b"\x81", b"Q", b"}K\x01K\x02s"]


@st.composite
def mutated_pickles(draw) -> bytes:
    raw = SEED_TORCH[draw(st.sampled_from([2, 4]))]
    _, pkl = _pickle_of(raw)
    data = bytearray(pkl)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "opcode", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "opcode":
            data[pos] = draw(st.sampled_from(_OPCODES))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(_NASTY))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 40)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 20))
    return _with_pickle(raw, bytes(data))


@st.composite
def mutated_files(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from([SEED_TORCH[2], SEED_TORCH[4], SEED_ST])))
    kind = draw(st.sampled_from(["flip", "truncate", "header-region", "append"]))
    if kind == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    if kind == "append":
        return bytes(raw) + draw(st.binary(min_size=1, max_size=64))
    limit = len(raw) if kind == "flip" else min(len(raw), 400)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, limit - 1))
        raw[pos] = draw(st.integers(0, 255))
    return bytes(raw)


@st.composite
def mutated_headers(draw) -> bytes:
    (n,) = struct.unpack("<Q", SEED_ST[:8])
    header = json.loads(SEED_ST[8 : 8 + n])
    name = draw(st.sampled_from(sorted(header)))
    values = st.one_of(st.integers(-2, 2**66), st.booleans(), st.none(), st.text(max_size=4), st.floats(allow_nan=True),
                       st.lists(st.integers(-1, 2**64), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    if name == "__metadata__":
        header[name] = draw(values)
    else:
        header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(values)
    blob = json.dumps(header).encode()
    if draw(st.booleans()):
        blob = b"[" * draw(st.integers(1, 5000)) + blob
    data = SEED_ST[8 + n :]
    return struct.pack("<Q", len(blob)) + blob + data


_tiny_inputs = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b),
    st.binary(max_size=200).map(lambda b: struct.pack("<Q", len(b)) + b"{" + b),
)


def _check(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.bin"
        path.write_bytes(raw)
        tracemalloc.start()
        try:
            read_container(path)
        except CkptError:
            pass
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < MAX_PEAK, f"{peak} bytes for a {len(raw)}-byte input"


_FUZZ = settings(max_examples=120, deadline=3000, suppress_health_check=[HealthCheck.too_slow], database=None)


@_FUZZ
@given(raw=mutated_pickles())
def test_mutated_pickles(raw: bytes) -> None:
    _check(raw)


@_FUZZ
@given(raw=mutated_files())
def test_mutated_files(raw: bytes) -> None:
    _check(raw)


@_FUZZ
@given(raw=mutated_headers())
def test_mutated_safetensors_headers(raw: bytes) -> None:
    _check(raw)


@_FUZZ
@given(raw=_tiny_inputs)
def test_random_small_inputs(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=40, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(raw=st.one_of(mutated_pickles(), mutated_files(), mutated_headers()))
def test_cli_one_error_line(tmp_path_factory: pytest.TempPathFactory, raw: bytes, cli) -> None:
    d = tmp_path_factory.mktemp("fz")
    path = d / ("model.safetensors" if raw[8:9] in (b"{", b"[") else "lit_model.pth")
    path.write_bytes(raw)
    good = d / "good.pth"
    good.write_bytes(SEED_TORCH[2])
    for args in (("inspect", path), ("inspect", "--json", path), ("diff", good, path)):
        res = cli(*args)
        assert "Traceback" not in res.stderr and "internal error" not in res.stderr, (args, res.stderr)
        if res.code not in (0, 8):
            assert res.code in (3, 4, 5, 6), (args, res)
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, (args, res.stderr)
