"""``ckpt-tool split`` with torch and safetensors only (the fast lane): sharding, consolidation, tied weights,
hand-built combined LitGPT / PEFT state dicts, refusals that leave nothing behind.

The peers (litgpt, peft, transformers) are checked in ``test_split_interop.py``.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import PROVENANCE_FILE, names, without_provenance
from safetensors.torch import load_file, save_file

from ckpt_tool.ops.layouts import SAFETENSORS_DTYPE_RANK, hf_shards
from ckpt_tool.ops.transform import Out

# --- builders --------------------------------------------------------------------------------------


def _model_sd(seed: int = 0, layers: int = 3) -> dict[str, torch.Tensor]:
    """A plain HF-style state dict with mixed dtypes and special float values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(64, 16, generator=g).to(torch.bfloat16)}
    sd["model.embed_tokens.weight"][0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")])
    for i in range(layers):
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g).to(torch.bfloat16)
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(32, 16, generator=g).to(torch.bfloat16)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(16, generator=g)
    sd["model.norm.weight"] = torch.randn(16, generator=g)
    sd["model.steps"] = torch.tensor([1, 2, 3], dtype=torch.int64)
    sd["lm_head.weight"] = torch.randn(64, 16, generator=g).to(torch.bfloat16)
    return sd


def _raw(path: Path, name: str) -> bytes:
    from ckpt_tool.io.container import read_container

    t = read_container(path).tensors[name]
    begin, end = t.byte_range
    with open(path, "rb") as fh:
        fh.seek(begin)
        return fh.read(end - begin)


def _snapshot(root: Path, provenance: bool = True) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (``provenance=False``: as if no provenance were recorded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not provenance and p.name == PROVENANCE_FILE:
            continue
        if not p.is_file():
            out[str(p.relative_to(root))] = b"<dir>"
        else:
            out[str(p.relative_to(root))] = p.read_bytes() if provenance or p.suffix != ".safetensors" else without_provenance(p)
    return out


def _load_dir(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))


LIT_CFG = {"name": "tiny", "n_layer": 2, "n_head": 4, "n_query_groups": 2, "n_embd": 32, "vocab_size": 64,
           "padded_vocab_size": 64, "block_size": 16, "mlp_class_name": "LLaMAMLP", "intermediate_size": 48,
           "norm_class_name": "RMSNorm", "bias": False}


def _lit_combined(r: int = 2, qkv_parts: tuple[str, ...] = ("q", "v"), seed: int = 0) -> dict[str, torch.Tensor]:
    """A LitGPT LoRA GPT state dict by its key grammar (q 32 rows, k = v 16 rows): q+v on qkv, mlp, head."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sizes = {"q": 32, "k": 16, "v": 16}
    sd: dict[str, torch.Tensor] = {
        "lm_head.lora_A": rnd(r, 32), "lm_head.lora_B": rnd(64, r), "lm_head.linear.weight": rnd(64, 32),
        "transformer.wte.weight": rnd(64, 32),
    }
    for i in range(2):
        h = f"transformer.h.{i}."
        sd[h + "norm_1.weight"] = rnd(32)
        sd[h + "attn.qkv.lora_A"] = rnd(r * len(qkv_parts), 32)
        sd[h + "attn.qkv.lora_B"] = rnd(sum(sizes[p] for p in qkv_parts), r)
        sd[h + "attn.qkv.linear.weight"] = rnd(64, 32)
        sd[h + "attn.proj.linear.weight"] = rnd(32, 32)
        sd[h + "norm_2.weight"] = rnd(32)
        for name, (o, i_) in {"fc_1": (48, 32), "fc_2": (48, 32), "proj": (32, 48)}.items():
            sd[h + f"mlp.{name}.lora_A"] = rnd(r, i_)
            sd[h + f"mlp.{name}.lora_B"] = rnd(o, r)
            sd[h + f"mlp.{name}.linear.weight"] = rnd(o, i_)
    sd["transformer.ln_f.weight"] = rnd(32)
    return sd


def _peft_combined(seed: int = 0) -> dict[str, torch.Tensor]:
    """``PeftModel.state_dict()`` by PEFT's key grammar: q/v LoRA on a 2-layer model, adapter 'default'."""
    g = torch.Generator().manual_seed(seed)
    p = "base_model.model."
    sd = {p + "model.embed_tokens.weight": torch.randn(64, 16, generator=g)}
    for i in range(2):
        a = f"{p}model.layers.{i}.self_attn."
        for proj, out in (("q_proj", 16), ("k_proj", 8), ("v_proj", 8)):
            if proj == "k_proj":
                sd[a + "k_proj.weight"] = torch.randn(out, 16, generator=g)
                continue
            sd[a + f"{proj}.base_layer.weight"] = torch.randn(out, 16, generator=g)
            sd[a + f"{proj}.lora_A.default.weight"] = torch.randn(4, 16, generator=g)
            sd[a + f"{proj}.lora_B.default.weight"] = torch.randn(out, 4, generator=g)
    sd[p + "lm_head.weight"] = torch.randn(64, 16, generator=g)
    return sd


# --- pinned facts ----------------------------------------------------------------------------------


def test_dtype_rank_is_save_file_order(tmp_path):
    """Our safetensors layout order is save_file's (dtype enum rank descending, then name): byte-identical files."""
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.float8_e5m2, torch.float8_e4m3fn, torch.int16, torch.uint16,
              torch.float16, torch.bfloat16, torch.int32, torch.uint32, torch.float32, torch.complex64, torch.float64,
              torch.int64, torch.uint64]
    sd = {}
    for i, dt in enumerate(dtypes):
        for name in (f"z.{i}", f"a.{i}", f"M{i}"):
            sd[name] = torch.zeros(3, dtype=torch.float64).to(dt) if dt != torch.bool else torch.ones(3, dtype=dt)
    items = list(sd.items())
    random.Random(0).shuffle(items)
    save_file(dict(items), tmp_path / "ref.safetensors", metadata={"format": "pt"})
    torch.save(dict(items), tmp_path / "in.bin")
    from ckpt_tool.ops.split import split

    split(tmp_path / "in.bin", out=tmp_path / "out", max_shard_size="0")
    assert without_provenance(tmp_path / "out" / "model.safetensors") == (tmp_path / "ref.safetensors").read_bytes()
    header = (tmp_path / "ref.safetensors").read_bytes()
    n = struct.unpack("<Q", header[:8])[0]
    order = [v["dtype"] for k, v in json.loads(header[8 : 8 + n]).items() if k != "__metadata__"]
    ranks = [SAFETENSORS_DTYPE_RANK[d] for d in order]
    assert ranks == sorted(ranks, reverse=True) and len(set(order)) == len(SAFETENSORS_DTYPE_RANK)


def _outs(sizes: list[int]) -> list[Out]:
    return [Out("s", f"t{i}", "U8", (n,)) for i, n in enumerate(sizes)]


def test_hf_shards_oversized_tensor_keeps_current_shard_open():
    assert [[o.name for o in g] for g in hf_shards(_outs([1, 10, 1]), 5)] == [["t1"], ["t0", "t2"]]


def test_hf_shards_match_huggingface_hub():
    hub = pytest.importorskip("huggingface_hub.serialization._base")
    rng = random.Random(1)
    for _ in range(300):
        sizes = [rng.choice([0, 1, 2, 3, 5, 8, 13, 40]) for _ in range(rng.randint(1, 30))]
        limit = rng.choice([1, 5, 10, 20, 50])
        outs = _outs(sizes)
        ours = [[o.name for o in g] for g in hf_shards(outs, limit)]
        split = hub.split_state_dict_into_shards_factory(
            {o.name: o for o in outs}, get_storage_size=lambda o: o.nbytes, filename_pattern="m{suffix}.safetensors",
            max_shard_size=limit,
        )
        assert ours == [list(v) for v in split.filename_to_tensors.values()], (sizes, limit)
        assert split.metadata["total_size"] == sum(sizes)


# --- shard / consolidate ---------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["safetensors", "bin"])
def test_shard_then_consolidate_is_bit_identical(tmp_path, cli, container):
    sd = _model_sd()
    src = tmp_path / "src"
    src.mkdir()
    if container == "safetensors":
        save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(sd, src / "pytorch_model.bin")
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "tokenizer.json").write_text("{}")
    (src / "generation_config.json").write_text("{}")
    res = cli("split", src, "--max-shard-size", "2KB", "--out", tmp_path / "sh", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert res.stderr == ""  # no progress bar without a TTY
    assert summary["mode"] == "shard" and summary["shards"] > 2 and summary["tensors"]["copied"] == len(sd)
    index = json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    assert sorted(index["weight_map"]) == sorted(sd)
    for f in set(index["weight_map"].values()):
        part = load_file(tmp_path / "sh" / f)
        assert all(index["weight_map"][k] == f for k in part)
        assert len(part) == 1 or sum(t.numel() * t.element_size() for t in part.values()) <= 2000
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= {p.name for p in (tmp_path / "sh").iterdir()}
    got = _load_dir(tmp_path / "sh")
    assert all(_bits_equal(got[k], v) for k, v in sd.items())

    res = cli("split", tmp_path / "sh", "--max-shard-size", "0", "--out", tmp_path / "one", "--json")
    assert res.code == 0, res.stderr
    assert names(tmp_path / "one") == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
    save_file(sd, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert without_provenance(tmp_path / "one" / "model.safetensors") == (tmp_path / "ref.safetensors").read_bytes()
    # shard again: the same bytes as the first time (the order is the file's, which is save_file's)
    res = cli("split", tmp_path / "one", "--max-shard-size", "2KB", "--out", tmp_path / "sh2")
    if container == "safetensors":
        assert _snapshot(tmp_path / "sh2", provenance=False) == _snapshot(tmp_path / "sh", provenance=False)


def test_bin_shards_become_safetensors_shards(tmp_path, cli):
    sd = _model_sd(layers=4)
    src = tmp_path / "bin"
    src.mkdir()
    names = list(sd)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    wmap = {}
    for i, part in enumerate(halves, 1):
        f = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, src / f)
        wmap.update(dict.fromkeys(part, f))
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wmap}))
    (src / "config.json").write_text("{}")
    res = cli("split", src, "--max-shard-size", "3KB", "--out", tmp_path / "st", "--json")
    assert res.code == 0, res.stderr
    assert not list((tmp_path / "st").glob("*.bin"))
    got = _load_dir(tmp_path / "st")
    assert sorted(got) == sorted(sd) and all(_bits_equal(got[k], v) for k, v in sd.items())


def test_force_replaces_and_removes_stale_shards(tmp_path, cli):
    sd = _model_sd()
    save_file(sd, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "2KB", "--out", out)
    assert res.code == 0 and "shards of at most 2,000 bytes" in res.stdout and "wrote" in res.stdout
    assert cli("split", tmp_path / "m.safetensors", "--max-shard-size", "2KB", "--out", tmp_path / "q", "--quiet").stdout == ""
    before = _snapshot(out)
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "0", "--out", out)
    assert res.code == 6 and "--force" in res.stderr and _snapshot(out) == before
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "0", "--out", out, "--force", "--json")
    assert res.code == 0, res.stderr
    assert names(out) == ["model.safetensors"]
    assert len(json.loads(res.stdout)["removed"]) == len(before) - 1  # the provenance record is rewritten, not stale


def test_dry_run_writes_nothing_and_lists_outputs(tmp_path, cli):
    save_file(_model_sd(), tmp_path / "m.safetensors")
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "2KB", "--out", tmp_path / "o", "--dry-run", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["dry_run"] and any(p.endswith("model.safetensors.index.json") for p in s["outputs"])
    assert not (tmp_path / "o").exists()
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "2KB", "--out", tmp_path / "o", "--dry-run")
    assert "would write" in res.stdout and not (tmp_path / "o").exists()


# --- tied storage ----------------------------------------------------------------------------------


def _tied_bin(d: Path, config: dict | None) -> dict[str, torch.Tensor]:
    d.mkdir()
    emb = torch.randn(64, 16)
    sd = {"transformer.wte.weight": emb, "transformer.h.0.w": torch.randn(16, 16), "lm_head.weight": emb}
    torch.save(sd, d / "pytorch_model.bin")
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    return sd


def test_tied_duplicate_dropped_when_the_config_ties(tmp_path, cli):
    sd = _tied_bin(tmp_path / "m", {"model_type": "gpt2", "tie_word_embeddings": True})
    res = cli("split", tmp_path / "m", "--max-shard-size", "0", "--out", tmp_path / "o", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["dropped_tied"] == ["lm_head.weight"]
    got = load_file(tmp_path / "o" / "model.safetensors")
    assert sorted(got) == ["transformer.h.0.w", "transformer.wte.weight"]
    assert _bits_equal(got["transformer.wte.weight"], sd["transformer.wte.weight"])


@pytest.mark.parametrize("config", [None, {"model_type": "gpt2"}, {"tie_word_embeddings": False}])
def test_tied_storage_refused_when_nothing_says_it_is_tied(tmp_path, cli, config):
    _tied_bin(tmp_path / "m", config)
    before = _snapshot(tmp_path)
    res = cli("split", tmp_path / "m", "--max-shard-size", "0", "--out", tmp_path / "o")
    assert res.code == 6 and "share one storage" in res.stderr and "tie_word_embeddings" in res.stderr
    assert _snapshot(tmp_path) == before


# --- combined LitGPT / PEFT state dicts (key grammar only) -----------------------------------------


def test_lit_combined_split_by_key_grammar(tmp_path, cli):
    sd = _lit_combined()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": sd}, run / "lit_model.pth")
    flags = {"lora_query": True, "lora_key": False, "lora_value": True, "lora_projection": False, "lora_mlp": True,
             "lora_head": True}
    (run / "model_config.yaml").write_text(yaml.safe_dump({**LIT_CFG, "lora_r": 2, "lora_alpha": 4, **flags}))
    (run / "tokenizer.json").write_text("{}")
    res = cli("split", run, "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["lora"]["r"] == 2 and s["lora"]["alpha"] == 4 and s["assumed"] == []
    assert s["lora"]["targets"] == ["query", "value", "mlp", "head"]
    base = torch.load(tmp_path / "B" / "lit_model.pth", weights_only=True)
    assert "model" not in base  # a bare state dict, as LitGPT bases are
    want = {k.replace(".linear.", "."): v for k, v in sd.items() if "lora_" not in k}
    assert list(base) == list(want) and all(_bits_equal(base[k], v) for k, v in want.items())
    lora = torch.load(tmp_path / "A" / "lit_model.pth.lora", weights_only=True)
    assert list(lora) == ["model"] and list(lora["model"]) == [k for k in sd if "lora_" in k]
    for k in lora["model"]:
        assert _raw(tmp_path / "A" / "lit_model.pth.lora", k) == _raw(run / "lit_model.pth", k)
    hp = yaml.safe_load((tmp_path / "A" / "hyperparameters.yaml").read_text())
    assert hp["checkpoint_dir"] == str((tmp_path / "B").absolute())
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_query"], hp["lora_key"], hp["lora_value"]) == (2, 4, True, False, True)
    # the base's model_config.yaml loses the lora_* fields (litgpt.Config rejects them), the adapter's keeps them
    assert "lora_r" not in yaml.safe_load((tmp_path / "B" / "model_config.yaml").read_text())
    assert (tmp_path / "A" / "model_config.yaml").read_bytes() == (run / "model_config.yaml").read_bytes()
    assert (tmp_path / "B" / "tokenizer.json").exists() and (tmp_path / "A" / "tokenizer.json").exists()


def test_lit_alpha_assumed_is_recorded_machine_readably(tmp_path, cli):
    torch.save(_lit_combined(qkv_parts=("q", "k", "v")), tmp_path / "combined.pth")
    res = cli("split", tmp_path / "combined.pth", "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["assumed"] == ["lora_alpha"] and s["lora"]["alpha"] == 16 and s["lora"]["alpha_source"] == "assumed"
    text = (tmp_path / "A" / "hyperparameters.yaml").read_text()
    assert "# ckpt-tool-assumed: lora_alpha\n" in text and "# ASSUMED: lora_alpha=16" in text
    assert yaml.safe_load(text)["lora_alpha"] == 16
    res = cli("split", tmp_path / "combined.pth", "--base-out", tmp_path / "B2", "--adapter-out", tmp_path / "A2",
              "--lora-alpha", "32", "--json")
    assert json.loads(res.stdout)["assumed"] == [] and "ckpt-tool-assumed" not in (tmp_path / "A2" / "hyperparameters.yaml").read_text()


def test_lit_recorded_settings_checked(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_lit_combined(), run / "lit_model.pth")
    (run / "model_config.yaml").write_text(yaml.safe_dump(LIT_CFG))
    hp = {"checkpoint_dir": "checkpoints/x", "lora_r": 2, "lora_alpha": 4, "lora_query": True, "lora_key": False,
          "lora_value": True, "lora_projection": False, "lora_mlp": True, "lora_head": True, "precision": "32-true"}
    (run / "hyperparameters.yaml").write_text("# ckpt-tool-assumed: lora_alpha\n" + yaml.safe_dump(hp))
    args = ("split", run, "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A")
    res = cli(*args, "--lora-alpha", "8")
    assert res.code == 6 and "contradicts" in res.stderr and not (tmp_path / "A").exists()
    res = cli(*args, "--json")
    assert res.code == 0, res.stderr
    text = (tmp_path / "A" / "hyperparameters.yaml").read_text()
    out = yaml.safe_load(text)
    assert out["precision"] == "32-true" and out["checkpoint_dir"] == str((tmp_path / "B").absolute())
    assert "# ckpt-tool-assumed: lora_alpha" in text and "checkpoints/x" in text  # carried over, provenance kept
    for bad in ({"lora_r": 4}, {"lora_mlp": False}, {"lora_key": True}):
        (run / "hyperparameters.yaml").write_text(yaml.safe_dump({**hp, **bad}))
        res = cli("split", run, "--base-out", tmp_path / "B3", "--adapter-out", tmp_path / "A3")
        assert res.code == 6 and "contradict" in res.stderr, bad
        assert not (tmp_path / "B3").exists() and not (tmp_path / "A3").exists()


def test_peft_combined_needs_alpha_then_writes_config(tmp_path, cli):
    sd = _peft_combined()
    d = tmp_path / "m"
    d.mkdir()
    save_file(sd, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    args = ("split", d / "model.safetensors", "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A")
    res = cli(*args)
    assert res.code == 6 and "--lora-alpha" in res.stderr
    assert not (tmp_path / "B").exists() and not (tmp_path / "A").exists()
    res = cli(*args, "--lora-alpha", "8", "--json")
    assert res.code == 0, res.stderr
    cfg = json.loads((tmp_path / "A" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["task_type"]) == (4, 8, ["q_proj", "v_proj"], "CAUSAL_LM")
    assert cfg["base_model_name_or_path"] == str((tmp_path / "B").absolute())
    base = load_file(tmp_path / "B" / "model.safetensors")
    adapter = load_file(tmp_path / "A" / "adapter_model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in base and not any(".base_layer" in k or "lora" in k for k in base)
    assert sorted(adapter) == sorted(
        k.replace(".default", "") for k in sd if ".lora_" in k
    )
    assert _bits_equal(base["model.layers.1.self_attn.v_proj.weight"],
                       sd["base_model.model.model.layers.1.self_attn.v_proj.base_layer.weight"])
    assert (tmp_path / "B" / "config.json").read_bytes() == (d / "config.json").read_bytes()


def test_peft_adapter_config_beside_input_is_used_and_checked(tmp_path, cli):
    d = tmp_path / "m"
    d.mkdir()
    torch.save(_peft_combined(), d / "combined.bin")
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
           "base_model_name_or_path": "org/base"}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    res = cli("split", d / "combined.bin", "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["lora"]["alpha"] == 16
    assert (tmp_path / "A" / "adapter_config.json").read_bytes() == (d / "adapter_config.json").read_bytes()
    for bad in ({"r": 8}, {"target_modules": ["q_proj"]}, {"use_dora": True}):
        (d / "adapter_config.json").write_text(json.dumps({**cfg, **bad}))
        res = cli("split", d / "combined.bin", "--base-out", tmp_path / "B2", "--adapter-out", tmp_path / "A2")
        assert res.code == 6 and "does not describe" in res.stderr, bad


# --- refusals: nothing left behind -----------------------------------------------------------------


def _incomplete_lit(d: Path) -> None:
    sd = _lit_combined()
    del sd["transformer.h.1.mlp.fc_2.lora_B"]
    torch.save(sd, d / "lit_model.pth")


def _incomplete_peft(d: Path) -> None:
    sd = _peft_combined()
    del sd["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    save_file(sd, d / "model.safetensors")


@pytest.mark.parametrize("make,needle", [(_incomplete_lit, "fc_2 has lora_A but no lora_B"),
                                          (_incomplete_peft, "q_proj has lora_B but no lora_A")])
def test_incomplete_lora_pairs_refused(tmp_path, cli, make, needle):
    d = tmp_path / "in"
    d.mkdir()
    make(d)
    before = _snapshot(tmp_path)
    res = cli("split", d, "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A", "--lora-alpha", "8")
    assert res.code == 6 and needle in res.stderr and "nothing was written" in res.stderr, res.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args,code",
    [
        (["--max-shard-size", "inf", "--out", "{o}"], 2),
        (["--max-shard-size", "nan", "--out", "{o}"], 2),
        (["--max-shard-size", "-5MB", "--out", "{o}"], 2),
        (["--max-shard-size", "1e400", "--out", "{o}"], 2),
        (["--max-shard-size", "5XB", "--out", "{o}"], 2),
        (["--max-shard-size", "0.1", "--out", "{o}"], 2),
        ([], 2),
        (["--base-out", "{o}"], 2),
        (["--base-out", "{o}", "--adapter-out", "{o}2", "--out", "{o}3"], 2),
        (["--out", "{o}", "--lora-alpha", "8"], 2),
        (["--base-out", "{o}", "--adapter-out", "{o}2", "--lora-alpha", "inf"], 2),
        (["--base-out", "{o}", "--adapter-out", "{o}"], 6),
        (["--base-out", "{o}", "--adapter-out", "{o}2"], 6),  # a plain model: no LoRA tensors to split off
        (["--max-shard-size", "1KB", "--out", "{src}/sub"], 6),  # inside the input
        (["--max-shard-size", "1KB", "--out", "{src}"], 6),
    ],
)
def test_refusals_leave_nothing_behind(tmp_path, cli, args, code):
    src = tmp_path / "src"
    src.mkdir()
    save_file(_model_sd(), src / "model.safetensors")
    before = _snapshot(tmp_path)
    res = cli("split", src, *[a.format(o=tmp_path / "o", src=src) for a in args])
    assert res.code == code, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert _snapshot(tmp_path) == before


def test_unknown_input_refused(tmp_path, cli):
    f = tmp_path / "junk.safetensors"
    f.write_bytes(os.urandom(64))
    res = cli("split", f, "--max-shard-size", "1KB", "--out", tmp_path / "o")
    assert res.code == 4 and res.stderr.startswith("error: ")
    res = cli("split", tmp_path / "nothing-here", "--max-shard-size", "1KB", "--out", tmp_path / "o")
    assert res.code == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.safetensors"]


def test_adapter_or_own_folder_refused(tmp_path, cli):
    d = tmp_path / "run"
    d.mkdir()
    torch.save({"model": {k: v for k, v in _lit_combined().items() if "lora_" in k}}, d / "lit_model.pth.lora")
    res = cli("split", d, "--max-shard-size", "1KB", "--out", tmp_path / "o")
    assert res.code == 6 and "adapter" in res.stderr
    torch.save(_lit_combined(), tmp_path / "c.pth")
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "lit_model.pth").write_bytes(b"x")
    res = cli("split", tmp_path / "c.pth", "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A")
    assert res.code == 6 and "already merged" in res.stderr and not (tmp_path / "B").exists()


def test_failure_while_writing_leaves_nothing(tmp_path, cli, monkeypatch):
    from ckpt_tool.io import writers

    save_file(_model_sd(), tmp_path / "m.safetensors")
    calls = {"n": 0}
    real = writers.SafetensorsWriter.copy

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(writers.SafetensorsWriter, "copy", flaky)
    before = _snapshot(tmp_path)
    res = cli("split", tmp_path / "m.safetensors", "--max-shard-size", "2KB", "--out", tmp_path / "new" / "deep")
    assert res.code == 9 and "No space left" in res.stderr
    assert _snapshot(tmp_path) == before  # no shard, no temp file, not even the directories it created


def test_copy_only_split_does_not_import_torch(tmp_path):
    """Byte copies need no torch: the engine's copy path reads through a stdlib mmap (saves ~1 s and ~150 MiB)."""
    import subprocess
    import sys

    save_file(_model_sd(), tmp_path / "m.safetensors")
    code = (
        "import sys\nfrom ckpt_tool.cli import main\n"
        f"try:\n    main(['split', {str(tmp_path / 'm.safetensors')!r}, '--max-shard-size', '2KB', '--out', "
        f"{str(tmp_path / 'o')!r}, '--quiet'])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert len(list((tmp_path / "o").glob("model-*.safetensors"))) > 1
