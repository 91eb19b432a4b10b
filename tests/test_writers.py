"""Streaming writers: what the real readers (safetensors, torch.load, zipfile) make of their output."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
import torch

from ckpt_tool.errors import UsageError
from ckpt_tool.io.atomic import TEMP_PREFIX
from ckpt_tool.io.container import read_container
from ckpt_tool.io.tensors import dtype_name
from ckpt_tool.io.writers import (
    SAFETENSORS_INDEX,
    TensorSpec,
    WriteError,
    build_torch_pickle,
    open_safetensors,
    open_sharded_safetensors,
    open_torch,
    parse_size,
    plan_shards,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2]


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for i, dt in enumerate(DTYPES):
        base = torch.randn(5, 7, generator=g) * 10
        out[f"t{i}.{str(dt)[6:]}"] = base.to(dt) if dt != torch.bool else base > 0
    out["scalar"] = torch.tensor(3.5)
    out["empty"] = torch.empty(0, 4, dtype=torch.bfloat16)
    out["transposed"] = torch.randn(6, 3, generator=g).t()  # non-contiguous source
    out["sliced"] = torch.randn(10, 10, generator=g)[2:8:2, 1:9:3]
    out["odd_bf16"] = torch.randn(3, generator=g).to(torch.bfloat16)  # odd byte count before wider dtypes
    out["after_odd"] = torch.randn(2, 2, generator=g)
    return out


def _specs(sd: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in sd.items()]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("mmap", [False, True])
def test_torch_zip_round_trip(tmp_path, zip64, mmap):
    sd = _sample()
    dest = tmp_path / "lit_model.pth"
    with open_torch(dest, _specs(sd), force_zip64=zip64) as w:
        for k, v in sd.items():
            w.write(k, v)
    got = torch.load(dest, weights_only=True, mmap=mmap)
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert _equal(got[k], v), k
    zf = zipfile.ZipFile(dest)
    assert zf.testzip() is None  # every CRC-32 is right
    names = zf.namelist()
    assert names[0] == "lit_model/data.pkl" and "lit_model/.data/serialization_id" in names
    with open(dest, "rb") as fh:
        for info in zf.infolist():
            if "/data/" in info.filename:
                fh.seek(info.header_offset + 26)
                n, m = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
                assert (info.header_offset + 30 + n + m) % 64 == 0, info.filename
    # our own header-only reader agrees (on the dtypes torch pickles with _rebuild_tensor_v2)
    v2 = {k: v for k, v in sd.items() if v.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2)}
    with open_torch(tmp_path / "v2.pth", _specs(v2), force_zip64=zip64) as w:
        for k, v in v2.items():
            w.write(k, v)
    cont = read_container(tmp_path / "v2.pth")
    assert list(cont.tensors) == list(v2)
    assert [cont.tensors[k].shape for k in v2] == [tuple(v.shape) for v in v2.values()]


def test_torch_pickle_matches_torch_save_prefix():
    """The pickle is built from torch's own rebuild function and storage classes, protocol 2."""
    import io

    t = torch.randn(3, 4)
    buf = io.BytesIO()
    torch.save({"a": t}, buf)
    with zipfile.ZipFile(buf) as zf:
        ref = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert build_torch_pickle([TensorSpec("a", "F32", (3, 4))]) == ref


def test_torch_wrapper(tmp_path):
    sd = {"w": torch.ones(2, 2)}
    with open_torch(tmp_path / "x.pth", _specs(sd), wrapper="model") as w:
        w.write("w", sd["w"])
    got = torch.load(tmp_path / "x.pth", weights_only=True)
    assert list(got) == ["model"] and torch.equal(got["model"]["w"], sd["w"])


def test_safetensors_round_trip(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = _sample()
    dest = tmp_path / "model.safetensors"
    with open_safetensors(dest, _specs(sd)) as w:
        for k, v in sd.items():
            w.write(k, v)
    got = load_file(dest)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert _equal(got[k], v), k
    with safe_open(dest, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    n = int.from_bytes(dest.read_bytes()[:8], "little")
    assert n % 8 == 0
    assert read_container(dest).tensors.keys() == sd.keys()


def test_copy_from_file(tmp_path):
    """``copy`` appends bytes from another file (copy_file_range) and they land intact, CRC included."""
    from safetensors.torch import load_file

    src = tmp_path / "src.bin"
    payload = torch.arange(1000, dtype=torch.float32)
    src.write_bytes(b"x" * 13 + payload.numpy().tobytes())
    specs = [TensorSpec("a", "F32", (1000,)), TensorSpec("b", "F32", (2,))]
    fd = os.open(src, os.O_RDONLY)
    try:
        with open_torch(tmp_path / "o.pth", specs) as w:
            w.copy("a", fd, 13, 4000)
            w.write("b", torch.ones(2))
        with open_safetensors(tmp_path / "o.safetensors", specs) as w:
            w.copy("a", fd, 13, 4000, memoryview(src.read_bytes())[13:])
            w.write("b", torch.ones(2))
    finally:
        os.close(fd)
    assert torch.equal(torch.load(tmp_path / "o.pth", weights_only=True)["a"], payload)
    assert zipfile.ZipFile(tmp_path / "o.pth").testzip() is None
    assert torch.equal(load_file(tmp_path / "o.safetensors")["a"], payload)


def test_sharded_index(tmp_path):
    from safetensors.torch import load_file

    sd = {f"layer.{i}.w": torch.full((10, 10), float(i)) for i in range(7)}  # 400 bytes each
    specs = _specs(sd)
    with open_sharded_safetensors(tmp_path, specs, max_shard_size=1000) as w:
        for k, v in sd.items():
            w.write(k, v)
    index = json.loads((tmp_path / SAFETENSORS_INDEX).read_text())
    assert index["metadata"]["total_size"] == 7 * 400
    files = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert files == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert set(index["weight_map"]) == set(sd)
    seen = {}
    for f in files:
        part = load_file(tmp_path / f)
        assert sum(v.numel() * 4 for v in part.values()) <= 1000
        for k, v in part.items():
            assert index["weight_map"][k] == f
            seen[k] = v
    assert all(torch.equal(seen[k], v) for k, v in sd.items())


def test_single_shard_has_no_index(tmp_path):
    sd = {"a": torch.ones(3)}
    with open_sharded_safetensors(tmp_path, _specs(sd), max_shard_size=10**9) as w:
        w.write("a", sd["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_plan_shards_oversized_tensor_alone():
    specs = [TensorSpec("a", "U8", (5,)), TensorSpec("big", "U8", (50,)), TensorSpec("c", "U8", (5,))]
    assert [[s.name for s in g] for g in plan_shards(specs, 10)] == [["a"], ["big"], ["c"]]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("1234") == 1234
    with pytest.raises(UsageError):  # a bad option value: exit 2 (tests/test_reader_limits.py has the rest)
        parse_size("lots")


@pytest.mark.parametrize("kind", ["torch", "safetensors", "sharded"])
def test_exception_mid_write_leaves_nothing(tmp_path, kind):
    sd = {f"w{i}": torch.ones(50) for i in range(4)}
    specs = _specs(sd)
    dest = tmp_path / ("x.pth" if kind == "torch" else "x.safetensors")
    with pytest.raises(KeyboardInterrupt):
        if kind == "torch":
            ctx = open_torch(dest, specs)
        elif kind == "safetensors":
            ctx = open_safetensors(dest, specs)
        else:
            ctx = open_sharded_safetensors(tmp_path, specs, max_shard_size=250)
        with ctx as w:
            for i, (k, v) in enumerate(sd.items()):
                if i == 3:
                    raise KeyboardInterrupt  # Ctrl-C after three of four tensors (and shards) were written
                w.write(k, v)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_wrong_writes_rejected(tmp_path):
    specs = [TensorSpec("a", "F32", (2,)), TensorSpec("b", "F32", (2,))]
    with pytest.raises(WriteError, match="only 1 of 2"), open_torch(tmp_path / "x.pth", specs) as w:
        w.write("a", torch.ones(2))
    with pytest.raises(WriteError, match="twice"), open_safetensors(tmp_path / "x.safetensors", specs) as w:
        w.write("b", torch.ones(2))
        w.write("b", torch.ones(2))
    with pytest.raises(WriteError, match="not announced"), open_safetensors(tmp_path / "x.safetensors", specs) as w:
        w.write("c", torch.ones(2))
    with pytest.raises(WriteError, match="announced"), open_safetensors(tmp_path / "x.safetensors", specs) as w:
        w.write("a", torch.ones(2, dtype=torch.float16))
    assert not [p for p in tmp_path.iterdir()]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("kind", ["torch", "safetensors", "sharded"])
def test_any_write_order_gives_the_same_checkpoint(tmp_path, kind):
    """Places are fixed when the writer opens: a step that feeds several files writes in its own order."""
    from safetensors.torch import load_file

    sd = {f"w{i}": torch.arange(i * 10, i * 10 + 7 + i, dtype=torch.float32) for i in range(5)}
    specs = _specs(sd)
    results = []
    for order in (list(sd), list(reversed(sd))):
        d = tmp_path / ("fwd" if order[0] == "w0" else "rev")
        d.mkdir()
        if kind == "torch":
            ctx, read = open_torch(d / "x.pth", specs), lambda d=d: torch.load(d / "x.pth", weights_only=True, mmap=True)
        elif kind == "safetensors":
            ctx, read = open_safetensors(d / "x.safetensors", specs), lambda d=d: load_file(d / "x.safetensors")
        else:
            ctx = open_sharded_safetensors(d, specs, max_shard_size=100)

            def read(d=d):
                idx = json.loads((d / "model.safetensors.index.json").read_text())
                return {k: v for f in sorted(set(idx["weight_map"].values())) for k, v in load_file(d / f).items()}
        with ctx as w:
            for k in order:
                w.write(k, sd[k])
        loaded = read()
        assert list(loaded) == list(sd) or kind == "sharded"
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
        results.append(sorted(p.name for p in d.iterdir()))
    assert results[0] == results[1]
