"""Torch zips whose pickle lies about its storages: torch.load(weights_only=True) refuses them, and so do we.

Each file is a real torch.save archive with a crafted ``data.pkl`` (tests/hostile_helpers.py). Before
these fixes ckpt-tool reported every one of them as a valid checkpoint (or crashed with an internal
error), so diff and merge would have read bytes of other tensors, or past the storage.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hostile_helpers import (
    Param,
    Storage,
    Tensor,
    base_zip,
    craft_pickle,
    rezip,
    set_encrypted_flag,
    torch_rejects,
)

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io.container import read_container
from ckpt_tool.io.torchzip import read_torch_zip

F32, F16, I64 = torch.FloatStorage, torch.HalfStorage, torch.LongStorage


def s0(stype=F32, numel=16):  # storage data/0 of base_zip: 16 float32 = 64 bytes
    return Storage("0", stype, numel)


def s1(stype=F32, numel=4):  # data/1: 4 float32 = 16 bytes
    return Storage("1", stype, numel)


def ok(storage=None, size=(16,)):
    return Tensor(storage or s0(), 0, size, (1,))


# name -> the object pickled as data.pkl. torch.load(weights_only=True) refuses every one of them.
TORCH_REFUSES: dict[str, Callable[[], object]] = {
    # one storage key, two declarations: torch uses the first and the second view no longer fits
    "storage key reused with another dtype": lambda: {"a": ok(), "b": Tensor(s0(F16, 32), 0, (32,), (1,))},
    "storage key reused with a larger size": lambda: {"a": ok(), "b": Tensor(s0(F32, 1000), 0, (1000,), (1,))},
    # BUILD after the rebuild: torch calls tensor.set_(*state), which checks the storage bounds
    "BUILD re-points the view outside its storage": lambda: {"a": Tensor(s0(), 0, (16,), (1,), state=(s0(), 0, (1000,), (1,)))},
    "BUILD rewrites the shape through a dict": lambda: {"a": Tensor(s0(), 0, (16,), (1,), state={"shape": (1000,)})},
    "BUILD rewrites the dtype through a dict": lambda: {"a": Tensor(s0(), 0, (16,), (1,), state={"dtype": "F16"})},
    "BUILD rewrites the offset through a dict": lambda: {"a": Tensor(s0(), 0, (4,), (1,), state={"storage_offset": -8})},
    "BUILD with a (dict, slots) state": lambda: {"a": Tensor(s0(), 0, (16,), (1,), state=({"shape": (99,)}, None))},
    "BUILD on a parameter with a dict state": lambda: {"a": Param(ok(), state={"shape": (1000,)})},
    "negative stride": lambda: {"a": Tensor(s0(), 15, (16,), (-1,))},
    "boolean size": lambda: {"a": Tensor(s0(), 0, (True,), (1,))},
    "boolean storage offset": lambda: {"a": Tensor(s0(), True, (4,), (1,))},
    "storage type given as a dtype": lambda: {"a": Tensor(Storage("0", torch.float32, 16), 0, (16,), (1,))},
    "integer tensor requiring grad": lambda: {
        "a": Tensor(Storage("0", I64, 8), 0, (8,), (1,), requires_grad=True)
    },
    "parameter rebuilt from a number": lambda: {"a": Param(5)},
    # only the weights were checked before: optimizer tensors could point anywhere
    "optimizer tensor outside its storage": lambda: {
        "model": {"w": ok()},
        "optimizer": {"state": {0: {"exp_avg": Tensor(s1(), 2, (100,), (1,))}}, "param_groups": []},
    },
    "optimizer tensor on a storage reused with another size": lambda: {
        "model": {"w": ok()},
        "optimizer": {"state": {0: {"exp_avg": Tensor(s0(F32, 64), 0, (64,), (1,))}}},
    },
}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return base_zip(tmp_path / "base.pth")


@pytest.mark.parametrize("case", sorted(TORCH_REFUSES))
def test_torch_refuses_and_so_do_we(tmp_path: Path, base: Path, case: str, cli) -> None:
    path = rezip(base, tmp_path / "lit_model.pth", craft_pickle(TORCH_REFUSES[case]()))
    assert torch_rejects(path), f"{case}: torch.load accepts it, the test premise is wrong"
    with pytest.raises(InvalidFile):
        read_torch_zip(path)
    res = cli("inspect", path)
    assert res.code == 4, (case, res)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    res = cli("diff", base, path)  # diff never reads the bytes of a view it could not validate
    assert res.code == 4 and res.stderr.startswith("error: "), (case, res)


def test_storage_reuse_that_torch_silently_reinterprets(tmp_path: Path, base: Path) -> None:
    """Declared F16 first, F32 second: torch loads both as float16 (the first declaration wins), so the
    tensor the pickle calls float32 comes back as 16 halves. We refuse the ambiguity."""
    pkl = craft_pickle({"b": Tensor(s0(F16, 32), 0, (32,), (1,)), "a": ok()})
    path = rezip(base, tmp_path / "m.pth", pkl)
    loaded = torch.load(path, weights_only=True, map_location="cpu")
    assert loaded["a"].dtype == torch.float16  # not what the pickle said
    with pytest.raises(InvalidFile, match="declared as 16 F32 and elsewhere as 32 F16"):
        read_torch_zip(path)


def test_parameter_state_that_replaces_the_data(tmp_path: Path, base: Path) -> None:
    """``_rebuild_parameter_with_state`` setattr's its state: ``{"data": t}`` silently swaps the tensor in torch."""
    other = Tensor(s1(), 0, (4,), (1,))
    pkl = craft_pickle({"w": Param(ok(), fn=torch._utils._rebuild_parameter_with_state, extra=({"data": other},))})
    path = rezip(base, tmp_path / "m.pth", pkl)
    assert tuple(torch.load(path, weights_only=True, map_location="cpu")["w"].shape) == (4,)  # not (16,)
    with pytest.raises(InvalidFile, match="replaces a parameter's data"):
        read_torch_zip(path)


def test_build_that_torch_accepts_is_validated_not_ignored(tmp_path: Path, base: Path) -> None:
    """``BUILD (storage, offset, size, stride)`` inside the storage: torch applies it, so must we."""
    pkl = craft_pickle({"a": Tensor(s0(), 0, (16,), (1,), state=(s0(), 2, (2, 3), (3, 1)))})
    path = rezip(base, tmp_path / "m.pth", pkl)
    t = torch.load(path, weights_only=True, map_location="cpu")["a"]
    info = read_torch_zip(path).weights["a"]
    assert (info.shape, info.stride, info.storage_offset) == (tuple(t.shape), t.stride(), t.storage_offset())


def test_neg_bit_tensor_is_unsupported(tmp_path: Path, base: Path, cli) -> None:
    """metadata ``{"neg": True}``: torch loads a negated view of the stored bytes; reading them raw is wrong."""
    pkl = craft_pickle({"a": Tensor(s0(), 0, (16,), (1,), extra=({"neg": True},))})
    path = rezip(base, tmp_path / "m.pth", pkl)
    assert torch.load(path, weights_only=True, map_location="cpu")["a"].is_neg()
    with pytest.raises(Unsupported, match="neg"):
        read_torch_zip(path)
    assert cli("inspect", path).code == 5


def test_locations_are_taken_as_map_location_cpu(tmp_path: Path, base: Path) -> None:
    """A checkpoint saved on a GPU names ``cuda:0``: torch.load(map_location="cpu") reads it, so do we."""
    pkl = craft_pickle({"a": Tensor(Storage("0", F32, 16, "cuda:0"), 0, (16,), (1,))})
    path = rezip(base, tmp_path / "m.pth", pkl)
    torch.load(path, weights_only=True, map_location="cpu")
    assert read_torch_zip(path).weights["a"].shape == (16,)


# ---------------------------------------------------------------- zip records


def test_encrypted_data_pkl(tmp_path: Path, base: Path, cli) -> None:
    path = rezip(base, tmp_path / "m.pth")
    set_encrypted_flag(path, "/data.pkl")
    assert torch_rejects(path)
    with pytest.raises(InvalidFile, match="encrypted"):
        read_container(path)
    res = cli("inspect", path)
    assert res.code == 4 and "encrypted" in res.stderr and res.stderr.count("\n") == 1, res


def test_encrypted_storage(tmp_path: Path, base: Path, cli) -> None:
    path = rezip(base, tmp_path / "m.pth")
    set_encrypted_flag(path, "/data/0")
    with pytest.raises(InvalidFile, match="encrypted"):
        read_container(path)
    assert cli("inspect", path).code == 4


@pytest.mark.parametrize("member", ["data.pkl", "0"])
def test_compressed_records_are_refused(tmp_path: Path, base: Path, member: str, cli) -> None:
    path = rezip(base, tmp_path / "m.pth", compress={member})
    with pytest.raises(Unsupported, match="compressed"):
        read_container(path)
    res = cli("inspect", path)
    assert res.code == 5 and "compressed" in res.stderr and res.stderr.count("\n") == 1, res


def test_duplicate_zip_records(tmp_path: Path, base: Path, cli) -> None:
    """Two ``data/0`` records: which one a reader uses depends on the reader."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = rezip(base, tmp_path / "m.pth", extra={"data/0": bytes(64)})
    with pytest.raises(InvalidFile, match="twice"):
        read_container(path)
    assert cli("inspect", path).code == 4


def test_real_files_still_read(tmp_path: Path) -> None:
    """Parameters, tied weights (one storage, two names), views, an optimizer, protocol 2-5."""
    lin = torch.nn.Linear(4, 3)
    emb = torch.nn.Parameter(torch.randn(10, 4))
    base = torch.randn(6, 4)
    sd = collections.OrderedDict(w=lin.weight, b=lin.bias, wte=emb, head=emb, t=base.t(), sl=base[2:4],
                                 pos=torch.arange(8).expand(1, -1))
    opt = torch.optim.SGD([lin.weight], lr=0.1, momentum=0.9)
    lin.weight.sum().backward()
    opt.step()
    optimizer = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3, 4), "exp_avg_sq": torch.zeros(3, 4)}},
                 "param_groups": [{"lr": 0.1, "params": [0]}], "momentum": opt.state_dict()["state"][0]["momentum_buffer"]}
    for proto in (2, 3, 4, 5):
        path = tmp_path / f"p{proto}.pth"
        torch.save({"model": sd, "optimizer": optimizer}, path, pickle_protocol=proto)
        tz = read_torch_zip(path)
        assert list(tz.weights) == list(sd) and tz.other_tensors == 4  # step, exp_avg, exp_avg_sq, momentum
        for name, t in sd.items():
            info = tz.weights[name]
            assert (info.shape, info.stride, info.storage_offset) == (tuple(t.shape), t.stride(), t.storage_offset())


@pytest.mark.interop
def test_litgpt_incremental_save_with_integer_storage_keys(tmp_path: Path, cli) -> None:
    """LitGPT's ``incremental_save`` (what ``convert_lit_checkpoint`` writes as ``model.pth``) numbers its
    storages 0, 1, ... as ints; torch.load reads them, and so must we (they were refused as "not a string")."""
    from litgpt.utils import incremental_save

    from ckpt_tool.io.tensors import TensorReader

    sd = {"a.weight": torch.randn(4, 3), "b.weight": torch.randn(2, 5).to(torch.bfloat16)}
    sd["tied.weight"] = sd["a.weight"]
    path = tmp_path / "model.pth"
    with incremental_save(path) as saver:
        saver.save({k: saver.store_early(v) for k, v in sd.items()})
    want = torch.load(path, weights_only=True)
    cont = read_container(path)
    reader = TensorReader()
    try:
        for name, t in want.items():
            assert torch.equal(reader.tensor(cont.tensors[name]), t), name
    finally:
        reader.close()
    assert cli("inspect", path).code == 0
    assert cli("diff", path, path, "-q").code == 0
