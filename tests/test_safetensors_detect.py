"""The generic handler: single files, HF model dirs and sharded dirs whose index is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft_helpers import lora_config, save_adapter, save_base, tiny_gpt2, tiny_llama
from safetensors import safe_open
from safetensors.torch import save_file

from ckpt_tool.errors import InvalidFile, NotFound, Unsupported
from ckpt_tool.ops.inspect import detect

# builds its checkpoints with transformers / peft (peft_helpers)
pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def sharded_src(tmp_path_factory) -> Path:
    model = tiny_llama()
    d = save_base(model, tmp_path_factory.mktemp("hf") / "sharded", max_shard_size="20KB")
    assert len(list(d.glob("model-*.safetensors"))) > 2
    return d


@pytest.fixture
def sharded(sharded_src, tmp_path) -> Path:
    d = tmp_path / "sharded"
    shutil.copytree(sharded_src, d)
    return d


def _index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def test_single_file(tmp_path) -> None:
    p = tmp_path / "weights.safetensors"
    tensors = {
        "z.weight": torch.zeros(3, 4),
        "a.bias": torch.ones(4, dtype=torch.bfloat16),
        "m": torch.zeros(2, 2, 2),
    }
    save_file(tensors, str(p), metadata={"format": "pt", "note": "hello"})
    info = detect(p)
    assert (info.format, info.kind, info.container, info.adapter_type) == (
        "safetensors",
        "model",
        "safetensors",
        None,
    )
    assert info.metadata == {"format": "pt", "note": "hello"}
    assert info.files == [str(p.absolute())]
    with safe_open(str(p), "pt") as fh:
        by_offset = sorted(
            fh.keys(), key=lambda k: info.tensors[[t.name for t in info.tensors].index(k)].data_offset
        )
    assert [t.name for t in info.tensors] == by_offset  # file order
    assert info.parameters == 12 + 4 + 8 and info.nbytes == 48 + 8 + 32
    assert info.details == {"config": None, "dir": str(tmp_path.absolute()), "index": None}
    assert info.warnings == []


def test_lora_keys_without_config_are_an_adapter(tmp_path) -> None:
    d = save_adapter(tiny_llama(), tmp_path / "ad", lora_config(r=4))
    loose = tmp_path / "loose.safetensors"
    shutil.copy(d / "adapter_model.safetensors", loose)
    info = detect(loose)
    assert info.format == "safetensors" and info.kind == "adapter" and info.adapter_type == "lora"
    assert info.lora["r"] == 4 and info.lora["alpha"] is None and info.lora["targets"] == ["q_proj", "v_proj"]
    assert any("alpha" in w and "adapter_config.json" in w for w in info.warnings)


def test_sharded_dir(sharded) -> None:
    info = detect(sharded)
    index = _index(sharded)
    shards = sorted(set(index["weight_map"].values()))
    assert info.files == [str((sharded / s).absolute()) for s in shards]
    assert (info.format, info.kind, info.container) == ("safetensors", "model", "safetensors")
    assert sorted(t.name for t in info.tensors) == sorted(index["weight_map"])
    # shard order, then file order inside each shard
    assert [Path(t.file).name for t in info.tensors] == sorted(Path(t.file).name for t in info.tensors)
    assert info.nbytes == index["metadata"]["total_size"]
    assert info.metadata["model_type"] == "llama" and info.metadata["architectures"] == ["LlamaForCausalLM"]
    assert info.metadata["torch_dtype"] == "float32"
    assert info.details["index"] == index and info.details["config"]["model_type"] == "llama"
    assert info.warnings == []
    model = tiny_llama()
    assert info.parameters == sum(p.numel() for p in model.state_dict().values())
    # the index file and config.json point at the same model
    assert detect(sharded / "model.safetensors.index.json").files == info.files
    assert detect(sharded / "config.json").files == info.files


def test_missing_shard(sharded) -> None:
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(InvalidFile, match=f"do not exist: {victim.name}"):
        detect(sharded)


def test_tensor_in_wrong_shard(sharded) -> None:
    index = _index(sharded)
    name = "model.embed_tokens.weight"
    right = index["weight_map"][name]
    wrong = next(s for s in sorted(set(index["weight_map"].values())) if s != right)
    index["weight_map"][name] = wrong
    _write_index(sharded, index)
    with pytest.raises(InvalidFile) as exc:
        detect(sharded)
    assert f"index says {wrong}, found in {right}" in exc.value.message


def test_tensor_in_no_shard(sharded) -> None:
    index = _index(sharded)
    index["weight_map"]["model.ghost.weight"] = next(iter(index["weight_map"].values()))
    _write_index(sharded, index)
    with pytest.raises(InvalidFile, match="'model.ghost.weight' should be in"):
        detect(sharded)


def test_smaller_inconsistencies_warn(sharded) -> None:
    index = _index(sharded)
    dropped = "model.norm.weight"
    del index["weight_map"][dropped]
    index["metadata"]["total_size"] += 4
    _write_index(sharded, index)
    shutil.copy(min(sharded.glob("model-*.safetensors")), sharded / "model-00099-of-00099.safetensors")
    info = detect(sharded)
    text = "\n".join(info.warnings)
    assert f"not listed in model.safetensors.index.json (e.g. {dropped!r}" in text
    assert "total_size" in text and "stale" in text
    assert "model-00099-of-00099.safetensors" in text and "left over" in text
    assert dropped in {t.name for t in info.tensors}  # still reported: it is in a shard


def test_tensor_in_two_shards(sharded) -> None:
    shards = sorted(sharded.glob("model-*.safetensors"))
    with safe_open(str(shards[0]), "pt") as fh:
        name = next(iter(fh.keys()))
        t = fh.get_tensor(name)
    with safe_open(str(shards[1]), "pt") as fh:
        extra = {k: fh.get_tensor(k) for k in list(fh.keys())}
    extra[name] = t
    save_file(extra, str(shards[1]), metadata={"format": "pt"})
    with pytest.raises(InvalidFile, match="more than one shard"):
        detect(sharded)


@pytest.mark.parametrize(
    "index_text,needle",
    [
        ("{oops", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"weight_map": {}}', "missing or empty 'weight_map'"),
        ('{"weight_map": {"a": 3}}', "must name a shard file"),
        ('{"weight_map": {"a": "../../etc/passwd"}}', "outside the model directory"),
        ('{"weight_map": {"a": "/etc/passwd"}}', "outside the model directory"),
    ],
)
def test_hostile_index(sharded, cli, index_text, needle) -> None:
    (sharded / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(InvalidFile) as exc:
        detect(sharded)
    assert needle in exc.value.message
    res = cli("inspect", "--json", sharded)
    assert res.code == 4 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_bin_sharded_index(tmp_path) -> None:
    d = tmp_path / "binsharded"
    d.mkdir()
    sd = tiny_gpt2().state_dict()
    names = list(sd)
    half = len(names) // 2
    parts = {
        "pytorch_model-00001-of-00002.bin": names[:half],
        "pytorch_model-00002-of-00002.bin": names[half:],
    }
    weight_map = {}
    for shard, keys in parts.items():
        torch.save({k: sd[k].clone() for k in keys}, d / shard)
        weight_map.update({k: shard for k in keys})
    total = sum(sd[k].numel() * sd[k].element_size() for k in names)
    (d / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    info = detect(d)
    assert (info.format, info.container) == ("torch", "torch")
    assert [Path(f).name for f in info.files] == list(parts)
    assert [t.name for t in info.tensors] == names and info.warnings == []


def test_hf_single_file_dirs(tmp_path) -> None:
    d = save_base(tiny_gpt2(), tmp_path / "gpt2")
    assert (d / "model.safetensors").is_file()
    info = detect(d)
    assert info.format == "safetensors" and info.metadata["model_type"] == "gpt2"
    assert info.metadata["architectures"] == ["GPT2LMHeadModel"] and info.details["config"]["n_layer"] == 2
    assert info.path == str(d) and info.files == [str((d / "model.safetensors").absolute())]
    # the same model as pytorch_model.bin
    b = tmp_path / "gpt2bin"
    b.mkdir()
    shutil.copy(d / "config.json", b)
    torch.save(tiny_gpt2().state_dict(), b / "pytorch_model.bin")
    binfo = detect(b)
    assert binfo.container == "torch" and binfo.format == "torch" and binfo.wrapper == "bare"
    assert binfo.metadata["model_type"] == "gpt2"
    # torch.save keeps the tied lm_head.weight that save_pretrained leaves out
    assert {t.name for t in binfo.tensors} == {t.name for t in info.tensors} | {"lm_head.weight"}


def test_bad_config_json(tmp_path, cli) -> None:
    d = save_base(tiny_gpt2(), tmp_path / "gpt2")
    (d / "config.json").write_text('{"model_type": "gpt2",')
    with pytest.raises(InvalidFile, match="config.json: the model config is not valid JSON"):
        detect(d)
    (d / "config.json").write_text('"just a string"')
    with pytest.raises(InvalidFile, match="expected a JSON object"):
        detect(d)
    res = cli("inspect", d)
    assert res.code == 4


def test_config_without_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(NotFound, match="no model weights"):
        detect(tmp_path)


def test_plain_torch_file(tmp_path) -> None:
    p = tmp_path / "ckpt.pt"
    model = {"layer.weight": torch.randn(4, 4), "layer.bias": torch.zeros(4)}
    opt = {"state": {0: {"exp_avg": torch.zeros(4, 4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"model": model, "optimizer": opt, "step": 3}, p)
    info = detect(p)
    assert (info.format, info.kind, info.container) == ("torch", "model", "torch")
    assert info.wrapper == "model" and info.training_state is True
    assert [t.name for t in info.tensors] == ["layer.weight", "layer.bias"]
    assert "optimizer state" in info.description and info.metadata["other_keys"] == ["optimizer", "step"]
    bare = tmp_path / "bare.pth"
    torch.save(model, bare)
    b = detect(bare)
    assert b.wrapper == "bare" and b.training_state is False and "bare state dict" in b.description


def test_unsupported_and_unknown_files(tmp_path, cli) -> None:
    import pickle

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotFound):
        detect(tmp_path / "notes.txt")
    pk = tmp_path / "obj.bin"
    pk.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(Unsupported):
        detect(pk)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage, not a checkpoint")
    with pytest.raises(InvalidFile):
        detect(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    res = cli("inspect", empty)
    assert res.code == 4 and "empty file" in res.stderr


def test_cli_json_sharded(sharded, cli) -> None:
    res = cli("inspect", "--json", "--tensors", sharded)
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["format"] == "safetensors" and data["kind"] == "model"
    assert data["tensors"] == len(_index(sharded)["weight_map"]) and len(data["files"]) > 2
    assert data["metadata"]["model_type"] == "llama" and data["warnings"] == []
    assert {t["name"] for t in data["tensor_list"]} == set(_index(sharded)["weight_map"])


def test_peft_dir_not_claimed_by_fallback(tmp_path) -> None:
    d = save_adapter(tiny_llama(), tmp_path / "ad", lora_config())
    assert detect(d).format == "peft"
    from ckpt_tool_safetensors.detect import detect as st_detect

    from ckpt_tool.io.container import Probe

    # the fallback alone still reads the weights file when asked directly
    assert st_detect(d / "adapter_model.safetensors", Probe()).kind == "adapter"
