"""``ckpt-tool split`` against the real peers: LitGPT LoRA models and PEFT models saved whole, split and then
loaded / merged by litgpt, peft and transformers; shards compared with ``save_pretrained``'s own, byte for byte."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from cli_helpers import PROVENANCE_FILE, without_provenance
from lit_merge_helpers import (
    _save_config,
    _tokenizer_files,
    assert_bit_equal,
    build_lora_model,
    lit_config,
    litgpt_merge,
)
from peft_helpers import lora_config, peft_model, save_adapter, save_base, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.interop

FLAGS = ("query", "key", "value", "projection", "mlp", "head")


def _files(d: Path) -> dict[str, bytes]:
    """The files of ``d`` as the peers would have written them (no provenance record, none in the headers)."""
    return {
        p.name: without_provenance(p) if p.suffix == ".safetensors" else p.read_bytes()
        for p in sorted(d.iterdir())
        if p.is_file() and p.name != PROVENANCE_FILE
    }


def _sd_dir(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# --- LitGPT ----------------------------------------------------------------------------------------


def _lit_reference_merge(model) -> dict[str, torch.Tensor]:
    """LitGPT's merge of the live model, as scripts/merge_lora.py finishes it."""
    from litgpt.lora import lora_filter, merge_lora_weights

    merge_lora_weights(model)
    return {k.replace("linear.", ""): v.detach().clone() for k, v in model.state_dict().items() if not lora_filter(k, v)}


@pytest.mark.parametrize("flags,wrap,dtype", [
    (("query", "value"), False, torch.float32),
    (FLAGS, True, torch.float32),
    (("key", "value", "mlp", "head"), True, torch.bfloat16),
])
def test_lit_split_then_merge_is_litgpt_merge(tmp_path, cli, flags, wrap, dtype):
    import litgpt
    import litgpt.lora

    config = lit_config(flags=flags)
    model = build_lora_model(config).to(dtype)
    run = tmp_path / "run"
    run.mkdir()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"model": sd} if wrap else sd, run / "lit_model.pth")
    _save_config(config, run)  # a litgpt.lora.Config dump: lora_r, lora_alpha and the flags are known
    _tokenizer_files(run)
    x = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        want_logits = model(x)

    B, A = tmp_path / "B", tmp_path / "A"
    res = cli("split", run / "lit_model.pth", "--base-out", B, "--adapter-out", A, "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["tensors"]["copied"] == len(sd) and s["assumed"] == []
    assert s["lora"]["targets"] == [f for f in FLAGS if f in flags]

    # the base is a LitGPT base: litgpt.GPT loads it strictly; base + adapter give the combined model's logits
    base_sd = torch.load(B / "lit_model.pth", weights_only=True)
    base_cfg = litgpt.Config.from_file(B / "model_config.yaml")
    litgpt.GPT(base_cfg).load_state_dict(base_sd, strict=True)
    lora_sd = torch.load(A / "lit_model.pth.lora", weights_only=True)["model"]
    again = litgpt.lora.GPT(litgpt.lora.Config.from_file(A / "model_config.yaml")).to(dtype)
    again.load_state_dict({**base_sd, **lora_sd}, strict=True)
    with torch.no_grad():
        assert torch.equal(again(x), want_logits)

    # litgpt merge_lora accepts the split folders (hyperparameters.yaml -> checkpoint_dir = B), and ckpt-tool merge
    # of the split gives the same bits as LitGPT's merge of the original live model
    want = _lit_reference_merge(model)
    assert_bit_equal(litgpt_merge(A, B, tmp_path), want)
    res = cli("merge", A, "--base", B, "--out", tmp_path / "M")
    assert res.code == 0, res.stderr
    assert_bit_equal(torch.load(tmp_path / "M" / "lit_model.pth", weights_only=True), want)
    res = cli("merge", A, "--out", tmp_path / "M2")  # the base is found through checkpoint_dir
    assert res.code == 0, res.stderr


def test_lit_without_side_files_assumes_alpha_and_merge_follows(tmp_path, cli):
    config = lit_config(flags=("query", "value"), alpha=16, r=2)
    model = build_lora_model(config)
    torch.save(model.state_dict(), tmp_path / "lit_model.pth")
    B, A = tmp_path / "B", tmp_path / "A"
    res = cli("split", tmp_path / "lit_model.pth", "--base-out", B, "--adapter-out", A, "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert set(s["assumed"]) == {"lora_alpha", "lora_query", "lora_key", "lora_value"}
    assert any("ASSUMED" in w for w in s["warnings"])
    # with a model config supplied afterwards, the merge of the assumed settings is LitGPT's
    _save_config(config, A)
    res = cli("merge", A, "--base", B, "--out", tmp_path / "M")
    assert res.code == 0, res.stderr
    assert_bit_equal(torch.load(tmp_path / "M" / "lit_model.pth", weights_only=True), _lit_reference_merge(model))


# --- PEFT ------------------------------------------------------------------------------------------


def _combined_peft(tmp_path: Path, config, base_model, fmt: str, with_adapter_config: bool):
    """(input file, peft model, reference base dir, reference adapter dir)."""
    ref_base = save_base(base_model, tmp_path / "ref_base")  # before get_peft_model wraps it
    pm = peft_model(base_model, config)
    ref_adapter = save_adapter(pm, tmp_path / "ref_adapter")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ref_base / "config.json", src / "config.json")
    (src / "tokenizer.json").write_text("{}")
    sd = pm.state_dict()  # torch.save keeps tied parameters as one storage, as it does for any model
    f = src / ("model.safetensors" if fmt == "safetensors" else "combined.bin")
    save_file(sd, f, metadata={"format": "pt"}) if fmt == "safetensors" else torch.save(sd, f)
    if with_adapter_config:
        shutil.copy(ref_adapter / "adapter_config.json", src / "adapter_config.json")
    return f, pm, ref_base, ref_adapter


def _logits(model, x) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("make,fmt,with_cfg,kw", [
    (tiny_llama, "safetensors", False, {}),
    (tiny_llama, "bin", True, {"target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"], "rank_pattern": {"o_proj": 2}}),
    (tiny_llama, "bin", True, {"target_modules": ["q_proj", "embed_tokens"], "use_dora": True, "modules_to_save": ["lm_head"]}),
    # GPT-2: Conv1D layers, biases, and an lm_head tied to wte (one storage in the .bin)
    (tiny_gpt2, "bin", True, {"target_modules": ["c_attn", "c_fc"], "lora_bias": True, "fan_in_fan_out": True}),
    (tiny_gpt2, "bin", False, {"target_modules": ["c_attn"], "fan_in_fan_out": True}),
])
def test_peft_split_matches_peft_saves_and_loads(tmp_path, cli, make, fmt, with_cfg, kw):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    f, pm, ref_base, ref_adapter = _combined_peft(tmp_path, lora_config(**kw), make(), fmt, with_cfg)
    x = torch.randint(0, 128, (2, 7))
    want_logits = _logits(pm, x)
    B, A = tmp_path / "B", tmp_path / "A"
    args = ["split", f, "--base-out", B, "--adapter-out", A, "--json"] + ([] if with_cfg else ["--lora-alpha", "8"])
    res = cli(*args)
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["tensors"]["copied"] == s["tensors"]["written"] and s["tensors"]["computed"] == 0

    # byte for byte what save_pretrained writes: the base model's file and the PEFT adapter's file
    assert without_provenance(B / "model.safetensors") == (ref_base / "model.safetensors").read_bytes()
    assert without_provenance(A / "adapter_model.safetensors") == (ref_adapter / "adapter_model.safetensors").read_bytes()
    assert (B / "config.json").read_bytes() == (ref_base / "config.json").read_bytes()

    # transformers + PEFT load the two and compute what the combined model computed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, info = AutoModelForCausalLM.from_pretrained(B, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        loaded = PeftModel.from_pretrained(base, A)
    assert torch.equal(_logits(loaded, x), want_logits)

    # merging the split is PEFT's merge_and_unload of the combined model, bit for bit
    res = cli("merge", A, "--base", B, "--out", tmp_path / "M")
    assert res.code == 0, res.stderr
    merged = {k: v.detach() for k, v in pm.merge_and_unload().state_dict().items()}
    got = _sd_dir(tmp_path / "M")
    assert_bit_equal(got, {k: v for k, v in merged.items() if k in got})
    assert set(merged) - set(got) <= {"lm_head.weight"} if base.config.tie_word_embeddings else set(merged) == set(got)


# --- shards vs save_pretrained ---------------------------------------------------------------------


@pytest.mark.parametrize("make,shard", [(tiny_llama, "20KB"), (tiny_llama, "7KB"), (tiny_gpt2, "30KB")])
def test_shards_are_save_pretrained_shards(tmp_path, cli, make, shard):
    """A .bin written by torch.save(model.state_dict()) keeps the model's tensor order, so our shards are
    save_pretrained(max_shard_size=...)'s, byte for byte — also for GPT-2, whose lm_head is tied to wte."""
    from transformers import AutoModelForCausalLM

    model = make()
    src = tmp_path / "src"
    save_base(model, src)  # config.json (+ generation_config.json)
    (src / "model.safetensors").unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    ref = save_base(model, tmp_path / "ref", max_shard_size=shard)
    res = cli("split", src, "--max-shard-size", shard, "--out", tmp_path / "S", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    if model.config.tie_word_embeddings:
        assert s["dropped_tied"] == ["lm_head.weight"]
    mine, theirs = _files(tmp_path / "S"), _files(ref)
    shards = sorted(n for n in theirs if n.endswith(".safetensors"))
    assert len(shards) > 1 and sorted(n for n in mine if n.endswith(".safetensors")) == shards
    for n in shards:
        assert mine[n] == theirs[n], n
    idx_m, idx_t = (json.loads(d["model.safetensors.index.json"]) for d in (mine, theirs))
    assert idx_m["weight_map"] == idx_t["weight_map"]
    assert idx_m["metadata"]["total_size"] == idx_t["metadata"]["total_size"]
    assert mine["config.json"] == theirs["config.json"]

    x = torch.randint(0, 128, (1, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "S", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert torch.equal(_logits(loaded, x), _logits(model, x))

    res = cli("split", tmp_path / "S", "--max-shard-size", "0", "--out", tmp_path / "one")
    assert res.code == 0, res.stderr
    single = save_base(model, tmp_path / "ref_one")
    assert without_provenance(tmp_path / "one" / "model.safetensors") == (single / "model.safetensors").read_bytes()


def test_peft_base_sharded_with_max_shard_size(tmp_path, cli):
    from transformers import AutoModelForCausalLM

    f, pm, ref_base, _ = _combined_peft(tmp_path, lora_config(), tiny_llama(), "bin", True)
    res = cli("split", f, "--base-out", tmp_path / "B", "--adapter-out", tmp_path / "A", "--max-shard-size", "20KB")
    assert res.code == 0, res.stderr
    index = json.loads((tmp_path / "B" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "B", output_loading_info=True)
    assert not info["missing_keys"]
    got = _sd_dir(tmp_path / "B")
    want = load_file(ref_base / "model.safetensors")
    assert_bit_equal(got, want)
