"""Container readers: agreement with the real libraries, and hostile inputs refused cleanly."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ckpt_tool.errors import InvalidFile, UnsafeFile, Unsupported
from ckpt_tool.io.container import read_container
from ckpt_tool.io.safetensors_header import read_safetensors_header
from ckpt_tool.io.sniff import SAFETENSORS, TORCH_ZIP, sniff
from ckpt_tool.io.torchzip import read_torch_zip

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]
NAME = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64", torch.int64: "I64",
        torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {f"t.{i}.{str(dt).split('.')[-1]}": (torch.rand(3, 5, generator=g) * 10).to(dt) for i, dt in enumerate(DTYPES)}
    sd["scalar"] = torch.tensor(3.0)
    sd["empty"] = torch.zeros(0, 4)
    return sd


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_torch_zip_matches_torch(tmp_path: Path, protocol: int) -> None:
    sd = _state()
    base = torch.randn(6, 4)
    sd["view.transposed"] = base.t()  # non-contiguous view
    sd["view.slice"] = base[2:4]  # storage offset into a shared storage
    path = tmp_path / "m.pth"
    torch.save({"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
                "iter_num": 7}, path, pickle_protocol=protocol)
    tz = read_torch_zip(path)
    assert tz.protocol == protocol
    assert tz.wrapper == "model" and tz.training_state and tz.extras == ["optimizer", "iter_num"]
    assert tz.other_tensors == 1
    assert list(tz.weights) == list(sd)
    for name, t in sd.items():
        info = tz.weights[name]
        assert info.dtype == NAME.get(t.dtype, "F32")
        assert info.shape == tuple(t.shape)
        assert info.stride == t.stride()
        assert info.storage_offset == t.storage_offset()
    # the offsets point at the real bytes
    info = tz.weights["t.0.float32"]
    raw = path.read_bytes()[info.data_offset: info.data_offset + info.nbytes]
    assert raw == sd["t.0.float32"].numpy().tobytes()


def test_safetensors_header_matches_library(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in _state().items()}
    path = tmp_path / "m.safetensors"
    save_file(sd, path, metadata={"format": "pt", "note": "x"})
    tensors, meta = read_safetensors_header(path)
    assert meta == {"format": "pt", "note": "x"}
    with safe_open(path, "pt") as f:
        assert sorted(f.keys()) == sorted(t.name for t in tensors)
        for t in tensors:
            ref = f.get_tensor(t.name)
            assert t.shape == tuple(ref.shape)
            raw = path.read_bytes()[t.data_offset: t.data_offset + t.nbytes]
            assert raw == ref.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_sniff_by_bytes_not_extension(tmp_path: Path) -> None:
    # a safetensors file named .pth whose last tensor holds a whole zip archive
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"x")
    payload = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    p = tmp_path / "weird.pth"
    save_file({"a": torch.zeros(2), "zip": payload}, p)
    assert sniff(p) == SAFETENSORS
    assert read_container(p).kind == "safetensors"
    q = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(1)}, q)
    assert sniff(q) == TORCH_ZIP
    assert read_container(q).kind == "torch"


# ---------------------------------------------------------------- hostile inputs

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_with_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, protocol: int, cli) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "lit_model.pth"
    _zip_with_pickle(path, pickle.dumps({"model": {"w": _Evil(marker)}}, protocol=protocol))
    with pytest.raises(UnsafeFile, match=r"posix\.system|os\.system"):
        read_torch_zip(path)
    res = cli("inspect", path)
    assert res.code == 4
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert "system" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_pickle_with_builtins_eval_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    payload = b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R."
    _zip_with_pickle(path, payload)
    with pytest.raises(UnsafeFile, match="builtins.eval"):
        read_torch_zip(path)


def _valid_torch(tmp_path: Path) -> Path:
    path = tmp_path / "ok.pth"
    torch.save({"a": torch.randn(64, 64), "b": torch.randn(64)}, path)
    return path


def test_truncated_and_empty_files(tmp_path: Path, cli) -> None:
    good = _valid_torch(tmp_path)
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(InvalidFile):
            read_container(bad)
        res = cli("inspect", bad)
        assert res.code == 4, res.stderr
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    res = cli("inspect", empty)
    assert res.code == 4 and "empty file" in res.stderr


def _st(header: dict | bytes, data: bytes = b"", n: int | None = None) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if n is None else n) + blob + data


BAD_SAFETENSORS = {
    "header too large": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, n=200_000_000),
    "header past EOF": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, n=5000),
    "invalid json": _st(b'{"a": {"dtype": "F32", ', b""),
    "metadata not str": _st({"__metadata__": {"x": 1}}),
    "offsets out of bounds": _st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
    "gap": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    "overlap": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "length mismatch": _st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
    "trailing bytes": _st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12),
    "unknown dtype": _st({"a": {"dtype": "F13", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "duplicate key": _st(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                         b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
    "negative shape": _st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_headers(tmp_path: Path, case: str, cli) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(BAD_SAFETENSORS[case])
    with pytest.raises(InvalidFile):
        read_safetensors_header(path)
    res = cli("inspect", path)
    assert res.code == 4, (case, res)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1


def test_duplicate_key_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    path.write_bytes(BAD_SAFETENSORS["duplicate key"])
    with pytest.raises(InvalidFile, match="duplicate key 'a'"):
        read_safetensors_header(path)


def test_legacy_and_torchscript_are_unsupported(tmp_path: Path, cli) -> None:
    legacy = tmp_path / "old.pth"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(Unsupported, match="legacy"):
        read_container(legacy)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(Unsupported, match="TorchScript"):
        read_container(scripted)
    assert cli("inspect", legacy).code == 5
    assert cli("inspect", scripted).code == 5


def test_storage_size_mismatch_is_invalid(tmp_path: Path) -> None:
    """A pickle that claims more elements than the storage record holds."""
    good = _valid_torch(tmp_path)
    src = zipfile.ZipFile(good)
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data/0"):
                data = data[:-8]
            out.writestr(item, data)
    with pytest.raises(InvalidFile, match="expected"):
        read_torch_zip(bad)


def test_random_corruption_never_tracebacks(tmp_path: Path, cli) -> None:
    """Flip and cut bytes of valid files: always a clean exit, never a traceback."""
    rng = random.Random(1234)
    torch_file = _valid_torch(tmp_path)
    st_file = tmp_path / "ok.safetensors"
    save_file({"a": torch.randn(16, 16), "b": torch.randn(16)}, st_file)
    for src in (torch_file, st_file):
        data = src.read_bytes()
        for i in range(40):
            mutated = bytearray(data)
            if i % 3 == 0:
                mutated = mutated[: rng.randrange(1, len(data))]
            else:
                for _ in range(rng.randrange(1, 8)):
                    pos = rng.randrange(0, min(len(mutated), 600))
                    mutated[pos] = rng.randrange(256)
            p = tmp_path / f"m{i}{src.suffix}"
            p.write_bytes(bytes(mutated))
            res = cli("inspect", "--json", p)
            assert res.code in (0, 3, 4, 5), (src, i, res)
            assert "Traceback" not in res.stderr
            if res.code:
                assert res.stderr.startswith("error: ")


def test_pickle_dag_bomb_is_fast(tmp_path: Path) -> None:
    """60 levels of a list holding the previous level twice: 2**60 paths, one object each level."""
    import time

    level: list = []
    for _ in range(60):
        level = [level, level]
    path = tmp_path / "bomb.pth"
    _zip_with_pickle(path, pickle.dumps({"model": {}, "junk": level}, protocol=2))
    t0 = time.perf_counter()
    tz = read_torch_zip(path)
    assert time.perf_counter() - t0 < 2
    assert tz.weights == {} and tz.other_tensors == 0


def test_dtypes_without_typed_storages(tmp_path: Path) -> None:
    """float8 and uint16/32/64 are saved as a byte storage + dtype (_rebuild_tensor_v3)."""
    sd = {
        "f8": torch.arange(6, dtype=torch.float32).to(torch.float8_e4m3fn).reshape(2, 3),
        "f8b": torch.ones(4).to(torch.float8_e5m2),
        "u16": torch.arange(5, dtype=torch.int32).to(torch.uint16)[1:],
        "u32": torch.arange(3, dtype=torch.int32).to(torch.uint32),
        "u64": torch.arange(2).to(torch.uint64),
        "f32": torch.ones(2),
    }
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    weights = read_torch_zip(path).weights
    assert {k: (v.dtype, v.shape) for k, v in weights.items()} == {
        "f8": ("F8_E4M3", (2, 3)), "f8b": ("F8_E5M2", (4,)), "u16": ("U16", (4,)), "u32": ("U32", (3,)),
        "u64": ("U64", (2,)), "f32": ("F32", (2,)),
    }
    u16 = weights["u16"]
    assert u16.storage_numel == 5 and u16.storage_offset == 1
    begin, end = u16.byte_range
    assert path.read_bytes()[begin:end] == sd["u16"].numpy().tobytes()
