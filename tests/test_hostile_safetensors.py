"""safetensors headers: every file the reference reader (safetensors 0.8.0 ``safe_open``) rejects, we reject.

Cases that Python's json accepts but serde does not (``true`` as a number, ``-0``, lone surrogates,
overflowing element counts, a non-map ``__metadata__``) were reported valid before. A differential
hypothesis test mutates real headers and checks the rule on random files too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from ckpt_tool.errors import CkptError, InvalidFile
from ckpt_tool.io.safetensors_header import read_safetensors_header

T = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def _st(header: dict | bytes, data: bytes = b"", n: int | None = None) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if n is None else n) + blob + data


def _entry(shape: object, offsets: object = None, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets if offsets is not None else [0, 4]}


REFERENCE_REJECTS = {
    "__metadata__ is a list": _st({"__metadata__": [], "a": T}, b"\0" * 4),
    "__metadata__ is an empty string": _st({"__metadata__": "", "a": T}, b"\0" * 4),
    "__metadata__ is false": _st({"__metadata__": False, "a": T}, b"\0" * 4),
    "__metadata__ is 0": _st({"__metadata__": 0, "a": T}, b"\0" * 4),
    "__metadata__ nested": _st({"__metadata__": {"x": {"y": "z"}}, "a": T}, b"\0" * 4),
    "__metadata__ value a number": _st({"__metadata__": {"x": 1}, "a": T}, b"\0" * 4),
    "true as a shape entry": _st({"a": _entry([True])}, b"\0" * 4),
    "false as an offset": _st({"a": _entry([1], [False, 4])}, b"\0" * 4),
    "true as an offset": _st({"a": _entry([0], [True, True])}, b"\0" * 4),
    "-0 as a shape entry": _st(b'{"a": {"dtype": "F32", "shape": [-0], "data_offsets": [0, 0]}}'),
    "-0 as an offset": _st(b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [-0, 0]}}'),
    "dimension >= 2**64 next to a 0": _st({"a": _entry([0, 2**64], [0, 0])}),
    "element count overflows before the 0": _st({"a": _entry([2**40, 2**40, 0], [0, 0])}),
    "offset >= 2**64": _st({"a": _entry([0], [2**64, 2**64])}),
    "lone surrogate in a name": _st(b'{"a\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "lone surrogate in metadata": _st(b'{"__metadata__": {"k": "\\udfff"}}'),
    "deeply nested JSON": _st(b'{"__metadata__": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
    "1.0 as a shape entry": _st({"a": _entry([1.0])}, b"\0" * 4),
    "dtype not a string": _st({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    # not JSON, though Python's json takes them (found by the differential fuzz test)
    "Infinity in an unknown field": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": Infinity}}', b"\0" * 4),
    "NaN in an unknown field": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": NaN}}', b"\0" * 4),
    "-Infinity in metadata": _st(b'{"__metadata__": {"k": -Infinity}}'),
    "number past f64 in an unknown field": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1e999}}', b"\0" * 4),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_REJECTS))
def test_reference_rejects_and_so_do_we(tmp_path: Path, case: str, cli) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(REFERENCE_REJECTS[case])
    with pytest.raises(Exception):  # noqa: B017 - the reference reader's error type is its own
        with safe_open(path, "pt") as f:
            list(f.keys())
    with pytest.raises(InvalidFile):
        read_safetensors_header(path)
    res = cli("inspect", path)
    assert res.code == 4, (case, res)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_metadata_null_is_refused(tmp_path: Path) -> None:
    """The reference reader takes ``null`` as "no metadata"; we want a map (stricter, documented)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(_st({"__metadata__": None, "a": T}, b"\0" * 4))
    with pytest.raises(InvalidFile, match="__metadata__"):
        read_safetensors_header(path)


def test_accepted_edge_cases_still_accepted(tmp_path: Path) -> None:
    """What the reference reader accepts and real writers produce: padding, unknown fields, empty files."""
    cases = {
        "padded": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' + b" " * 5, b"\0" * 4),
        "unknown field": _st({"a": {**T, "extra": -1}}, b"\0" * 4),
        "empty": _st({}),
        "big dim times 0": _st({"a": _entry([0, 2**63], [0, 0])}),
        "surrogate pair": _st(b'{"\\ud83d\\ude00": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "-1 outside shapes": _st({"__metadata__": {"x": "-0"}, "a": {**T, "n": -0}}, b"\0" * 4),
        "large finite float outside shapes": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1e308}}', b"\0" * 4),
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(raw)
        with safe_open(path, "pt") as f:
            keys = sorted(f.keys())
        tensors, _ = read_safetensors_header(path)
        assert sorted(t.name for t in tensors) == keys, name


def test_header_size_cap(tmp_path: Path, cli) -> None:
    """A 20 MiB header (the reference allows 100 MB): refused before it is read or parsed."""
    from ckpt_tool.limits import MAX_SAFETENSORS_HEADER_BYTES

    n = MAX_SAFETENSORS_HEADER_BYTES + 1
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + b"{" + b" " * (n - 2) + b"}")
    res = cli("inspect", path)
    assert res.code == 4 and "limit" in res.stderr and res.stderr.count("\n") == 1, res


def test_tensor_count_cap(tmp_path: Path, cli) -> None:
    """300,000 empty tensors in an 11 MB header (under the byte cap): refused by the count cap."""
    from ckpt_tool.limits import MAX_SAFETENSORS_TENSORS

    count = MAX_SAFETENSORS_TENSORS + 1000
    body = ",".join(f'"{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(count))
    path = tmp_path / "many.safetensors"
    path.write_bytes(_st(("{" + body + "}").encode()))
    res = cli("inspect", path)
    assert res.code == 4 and "tensors (limit" in res.stderr, res


# ---------------------------------------------------------------- differential, random headers

_SCALARS = st.one_of(
    st.integers(-3, 2**65), st.booleans(), st.none(), st.floats(allow_nan=False, width=32), st.text(max_size=3)
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)
_DTYPES = st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "F64", "f32", "Q4"])


@st.composite
def _headers(draw) -> bytes:
    header: dict = {}
    offset = 0
    for i in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        numel = 1
        for d in shape:
            numel *= d
        size = numel * 4
        entry: dict = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        if draw(st.booleans()):  # corrupt one field
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
            entry[field] = draw(_DTYPES if field == "dtype" else _VALUES)
        header[f"t{i}"] = entry
    if draw(st.booleans()):
        header["__metadata__"] = draw(_VALUES)
    raw = json.dumps(header).encode()
    if draw(st.booleans()):
        raw = raw.replace(b"0", b"-0", 1)
    return _st(raw, b"\0" * offset)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_headers())
def test_reject_whatever_the_reference_rejects(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    try:
        with safe_open(path, "pt") as f:
            ref = sorted(f.keys())
    except Exception:
        ref = None
    try:
        ours = sorted(t.name for t in read_safetensors_header(path)[0])
    except CkptError:
        ours = None
    if ref is None:
        assert ours is None, raw
    elif ours is not None:
        assert ours == ref


def test_library_written_files_agree(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.bfloat16)}, path, metadata={"format": "pt"})
    tensors, meta = read_safetensors_header(path)
    assert [t.name for t in tensors] == ["a", "b"] and meta == {"format": "pt"}
