"""PEFT LoRA merge plans against the real ``PeftModel.from_pretrained(...).merge_and_unload()``.

Every case builds a tiny transformers model, wraps it with ``get_peft_model``, gives the adapter
random non-zero weights (lora_B starts at zero, DoRA's magnitude starts at the weight norm), saves
base and adapter, and compares our merge bit for bit with what PEFT's merged model writes through
``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckpt_tool.errors import Refused, Unsupported
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.inspect import detect
from ckpt_tool.ops.merge import run_plan
from ckpt_tool.ops.merge_plan import MergeOptions, MergePlan
from ckpt_tool.ops.transform import SideFile, Sink

pytestmark = pytest.mark.interop

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


# ----------------------------------------------------------------------------------- builders


def llama(tie: bool = False, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=64))


def make_case(
    tmp: Path,
    model,
    dtype: torch.dtype,
    lora_kwargs: dict[str, Any],
    *,
    autocast: bool = True,
    extra_adapters: dict[str, dict[str, Any]] | None = None,
    shard: str | None = None,
    safe: bool = True,
) -> tuple[Path, Path]:
    """Save ``model`` in ``dtype`` as the base and a trained-looking adapter for it."""
    from peft import LoraConfig, get_peft_model

    base_dir, ad_dir = tmp / "base", tmp / "adapter"
    model = model.to(dtype)
    model.save_pretrained(base_dir, **({"max_shard_size": shard} if shard else {}))
    pm = get_peft_model(model, LoraConfig(**lora_kwargs), autocast_adapter_dtype=autocast)
    for name, kw in (extra_adapters or {}).items():
        pm.add_adapter(name, LoraConfig(**kw))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen).to(p.dtype))
            elif "lora_" in name or "modules_to_save" in name or (p.requires_grad and name.endswith(".bias")):
                p.copy_((0.2 * torch.randn(p.shape, generator=gen)).to(p.dtype))
    pm.save_pretrained(ad_dir, safe_serialization=safe)
    return base_dir, ad_dir


def reference(tmp: Path, base_dir: Path, ad_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What PEFT writes: from_pretrained + merge_and_unload + save_pretrained, read back."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, ad_dir).merge_and_unload()
    out = tmp / "reference"
    merged.save_pretrained(out)
    return load_file(out / "model.safetensors")


# ------------------------------------------------------------------------- detection / engine


def detect_adapter(path: Path) -> CheckpointInfo:
    info = detect(path)
    assert info.format == "peft" and info.kind == "adapter"
    return info


def detect_base(path: Path) -> CheckpointInfo:
    info = detect(path)
    assert info.kind == "model"
    return info


def plan_for(base_dir: Path, ad_dir: Path, **opts: Any) -> MergePlan:
    from ckpt_tool_peft.merge import plan_merge

    return plan_merge(detect_adapter(ad_dir), detect_base(base_dir), MergeOptions(**opts))


def apply_plan(plan: MergePlan) -> dict[str, torch.Tensor]:
    """The MergePlan contract read plainly, all in memory: a cross-check of the streaming engine."""
    from safetensors import safe_open

    files: dict[str, Any] = {}

    def tensor(file: str, name: str) -> torch.Tensor:
        if file not in files:
            if file.endswith(".safetensors"):
                files[file] = safe_open(file, "pt")
            else:  # a torch zip written by the test itself
                sd = torch.load(file, weights_only=True, mmap=True)
                files[file] = type("SD", (), {"get_tensor": staticmethod(sd.__getitem__)})
        return files[file].get_tensor(name)

    def load(name: str) -> torch.Tensor:
        ti = plan.adapter_tensors[name]
        return tensor(ti.file, name)

    out: dict[str, torch.Tensor] = {}
    for ti in plan.base.tensors:
        if ti.name in plan.drop:
            continue
        t = tensor(ti.file, ti.name)
        if ti.name in plan.changes:
            t = plan.changes[ti.name](t, load)
        want = plan.out_dtype[ti.name]
        if ST_DTYPES.get(t.dtype) != want:
            t = t.to({v: k for k, v in ST_DTYPES.items()}[want])
        out[plan.rename.get(ti.name, ti.name)] = t
    return out


def read_dir(out: Path) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        got.update(load_file(f))
    return got


def ours(tmp: Path, base_dir: Path, ad_dir: Path, **opts: Any) -> dict[str, torch.Tensor]:
    """Our merge: the plan run by the streaming engine (``ops.merge.run_plan``) into a real output dir."""
    plan = plan_for(base_dir, ad_dir, **opts)
    assert plan.layout == "hf"
    assert {p.name for p in plan.copy_files} == {"config.json", "generation_config.json"}
    out = tmp / f"ours-{len(list(tmp.glob('ours-*')))}"
    run_plan(plan, Sink("hf", out, {}, [SideFile(f.name, src=f) for f in plan.copy_files]))
    assert (out / "config.json").read_bytes() == (base_dir / "config.json").read_bytes()
    got = read_dir(out)
    assert_bit_equal(got, apply_plan(plan))  # the engine and the contract's plain reading agree
    return got


def assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k, x in a.items():
        y = b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        iv = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        assert torch.equal(x.contiguous().view(iv), y.contiguous().view(iv)), f"{k} differs"


def check(tmp: Path, base_dir: Path, ad_dir: Path, dtype: torch.dtype, *, changed: int | None = None, **opts):
    ref = reference(tmp, base_dir, ad_dir, dtype)
    got = ours(tmp, base_dir, ad_dir, **opts)
    assert_bit_equal(got, ref)
    base = read_dir(base_dir)
    n = sum(not torch.equal(got[k], base[k]) for k in base)
    if changed is not None:
        assert n == changed
    assert n > 0  # the merge really changed something
    return got


# ---------------------------------------------------------------------------------- bit-exact


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_plain_lora_llama(tmp_path, dt):
    dtype = DTYPES[dt]
    b, a = make_case(tmp_path, llama(), dtype, {"r": 4, "lora_alpha": 16, "target_modules": ALL_LINEAR})
    check(tmp_path, b, a, dtype, changed=14)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_rslora_rank_alpha_pattern(tmp_path, dt):
    dtype = DTYPES[dt]
    kw = {
        "r": 4,
        "lora_alpha": 8,
        "use_rslora": True,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        "alpha_pattern": {"down_proj": 3},
    }
    b, a = make_case(tmp_path, llama(), dtype, kw)
    got = check(tmp_path, b, a, dtype, changed=6)
    assert got  # shapes per module came from rank_pattern
    plan = plan_for(b, a)
    assert len(plan.summary["lora"]["scales"]) >= 3


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_dora_linear(tmp_path, dt):
    dtype = DTYPES[dt]
    b, a = make_case(
        tmp_path,
        llama(),
        dtype,
        {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["q_proj", "v_proj", "up_proj"]},
    )
    check(tmp_path, b, a, dtype, changed=6)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_embedding_lora_and_modules_to_save(tmp_path, dt):
    dtype = DTYPES[dt]
    kw = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["embed_tokens", "o_proj"],
        "modules_to_save": ["lm_head"],
    }
    b, a = make_case(tmp_path, llama(), dtype, kw)
    keys = load_file(a / "adapter_model.safetensors")
    assert "base_model.model.lm_head.weight" in keys
    assert "base_model.model.model.embed_tokens.base_layer.weight" in keys
    check(tmp_path, b, a, dtype, changed=4)


def test_embedding_dora(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(),
        torch.bfloat16,
        {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["embed_tokens", "k_proj"]},
    )
    check(tmp_path, b, a, torch.bfloat16, changed=3)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_row_blocks_and_reused_buffers_keep_the_bits(tmp_path, monkeypatch, model):
    """The base is upcast and added a few rows at a time into reused scratch buffers; with blocks of 2-3
    rows, modules of several shapes after one another and fan_in_fan_out, not one bit may change."""
    import ckpt_tool_peft.merge as peft_merge

    monkeypatch.setattr(peft_merge, "ADD_BLOCK_ELEMS", 100)
    if model == "llama":
        b, a = make_case(tmp_path, llama(), torch.bfloat16, {"r": 4, "lora_alpha": 16, "target_modules": ALL_LINEAR})
        check(tmp_path, b, a, torch.bfloat16, changed=14)
    else:
        kw = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True}
        b, a = make_case(tmp_path, gpt2(), torch.bfloat16, kw)
        check(tmp_path, b, a, torch.bfloat16, changed=8)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_gpt2_conv1d_lora_bias(tmp_path, dt):
    dtype = DTYPES[dt]
    kw = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["c_attn", "c_proj", "c_fc"],
        "fan_in_fan_out": True,
        "lora_bias": True,
    }
    b, a = make_case(tmp_path, gpt2(), dtype, kw)
    plan = plan_for(b, a)
    assert plan.summary["lora"]["fan_in_fan_out_modules"] == 8 and plan.summary["lora"]["bias_modules"] == 8
    check(tmp_path, b, a, dtype, changed=16)


def test_gpt2_conv1d_dora(tmp_path):
    kw = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["c_attn", "c_proj"],
        "fan_in_fan_out": True,
        "use_dora": True,
    }
    b, a = make_case(tmp_path, gpt2(), torch.bfloat16, kw)
    check(tmp_path, b, a, torch.bfloat16, changed=6)  # attn.c_attn, attn.c_proj, mlp.c_proj x 2 layers


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_replace_base(tmp_path, bias):
    """bias="all"/"lora_only" saves biases (``….base_layer.bias``, ``….ln_1.bias``) that replace the base's."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "bias": bias}
    b, a = make_case(tmp_path, gpt2(), torch.bfloat16, kw)
    plan = plan_for(b, a)
    assert "transformer.h.0.attn.c_attn.bias" in plan.summary["replaced_tensors"]
    check(tmp_path, b, a, torch.bfloat16, changed=4 if bias == "lora_only" else 15)


def test_sharded_base_and_bin_adapter(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(),
        torch.bfloat16,
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "gate_proj"]},
        shard="20KB",
        safe=False,
    )
    assert (b / "model.safetensors.index.json").is_file() and (a / "adapter_model.bin").is_file()
    check(tmp_path, b, a, torch.bfloat16, changed=4)


def test_fp16_base(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(),
        torch.float16,
        {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ALL_LINEAR},
    )
    check(tmp_path, b, a, torch.float16, changed=14)


def test_bf16_saved_adapter_on_fp32_base(tmp_path):
    """Adapter tensors saved in bf16 are upcast to fp32 parameters by from_pretrained."""
    from peft import LoraConfig, get_peft_model

    b, a = make_case(
        tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "up_proj"]}
    )
    sd = load_file(a / "adapter_model.safetensors")
    save_file(
        {k: v.to(torch.bfloat16) for k, v in sd.items()},
        a / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    del LoraConfig, get_peft_model
    check(tmp_path, b, a, torch.float32, changed=4)


def test_dtype_override_loads_the_base_in_that_dtype(tmp_path):
    """--dtype X is from_pretrained(base, dtype=X) + merge_and_unload: the base is cast BEFORE the merge
    math (it used to be a cast of the fp32 result, which rounds differently)."""
    b, a = make_case(
        tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    )
    ref = reference(tmp_path, b, a, torch.bfloat16)
    got = ours(tmp_path, b, a, dtype="bf16")
    assert_bit_equal(got, ref)
    cast_after = {k: v.to(torch.bfloat16) for k, v in reference(tmp_path / "f", b, a, torch.float32).items()}
    assert any(not torch.equal(got[k], cast_after[k]) for k in got)  # the two orders really differ here


def test_multi_adapter_dir(tmp_path):
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    other = {"r": 2, "lora_alpha": 4, "target_modules": ["v_proj", "down_proj"]}
    b, a = make_case(tmp_path, llama(), torch.float32, kw, extra_adapters={"other": other})
    assert (a / "other" / "adapter_config.json").is_file()
    ref = reference(tmp_path, b, a / "other", torch.float32)
    got = ours(tmp_path, b, a, adapter_name="other")
    assert_bit_equal(got, ref)
    assert_bit_equal(ours(tmp_path, b, a, adapter_name="default"), ours(tmp_path, b, a))
    with pytest.raises(Exception) as exc:
        plan_for(b, a, adapter_name="nope")
    assert "nope" in str(exc.value)


def test_tied_embeddings_embedding_lora(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(tie=True),
        torch.bfloat16,
        {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "q_proj"]},
    )
    assert "lm_head.weight" not in load_file(b / "model.safetensors")
    check(tmp_path, b, a, torch.bfloat16, changed=3)


# ----------------------------------------------------------------------------------- refusals


def _edit_config(ad: Path, **changes: Any) -> None:
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg.update(changes)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))


def _edit_weights(ad: Path, fn) -> None:
    sd = load_file(ad / "adapter_model.safetensors")
    save_file(fn(sd), ad / "adapter_model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def simple(tmp_path):
    return make_case(
        tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    )


@pytest.mark.parametrize(
    "changes, words, error",
    [
        ({"init_lora_weights": "pissa"}, "rewrote the base", Refused),
        ({"init_lora_weights": "olora"}, "path_initial_model_for_weight_conversion", Refused),
        ({"init_lora_weights": "loftq"}, "rewrote the base", Refused),
        # a tuner or variant with its own merge rule is Unsupported (exit 5), not a refused input (exit 6)
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication", Unsupported),
        ({"use_bdlora": {"x": 1}}, "use_bdlora", Unsupported),
        ({"peft_type": "IA3"}, "IA3", Unsupported),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA", Unsupported),
    ],
)
def test_refuses_unmergeable_configs(simple, changes, words, error):
    b, a = simple
    _edit_config(a, **changes)
    with pytest.raises(error) as exc:
        plan_for(b, a)
    assert words in str(exc.value)


def test_all_problems_in_one_refusal(simple):
    b, a = simple

    def damage(sd):
        sd.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")  # missing B
        sd["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] = torch.zeros(0)  # ZeRO-3 style
        sd["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"] = torch.ones(4, 31)  # bad shape
        sd["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.ones(
            4, 32
        )  # not in base
        sd["base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"] = torch.ones(32, 4)
        return sd

    _edit_weights(a, damage)
    _edit_config(a, init_lora_weights="pissa")
    with pytest.raises(Refused) as exc:
        plan_for(b, a)
    msg = str(exc.value)
    for words in (
        "layers.0.self_attn.q_proj: missing lora_B.weight",
        "ZeRO-3",
        "layers.0.self_attn.v_proj",
        "layers.7.self_attn.q_proj",
        "rewrote the base",
        "5 problem",
    ):
        assert words in msg, words


def test_refuses_rank_disagreeing_with_config(simple):
    b, a = simple
    _edit_config(a, r=8)
    with pytest.raises(Refused, match="disagree with r=8"):
        plan_for(b, a)


def test_refuses_lora_bias_disagreeing_with_config(tmp_path):
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_bias": True}
    b, a = make_case(tmp_path, gpt2(), torch.float32, kw)
    _edit_config(a, lora_bias=False)
    with pytest.raises(Refused, match="has lora_B.bias but lora_bias is false"):
        plan_for(b, a)
    _edit_config(a, lora_bias=True)
    _edit_weights(a, lambda sd: {k: v for k, v in sd.items() if not k.endswith("lora_B.bias")})
    with pytest.raises(Refused, match=r"missing lora_B.bias \(lora_bias is true\)"):
        plan_for(b, a)


def test_refuses_base_with_lora_keys(simple, tmp_path):
    b, a = simple
    sd = load_file(b / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.ones(4, 32)
    save_file(sd, b / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Refused, match="contains adapter tensors"):
        plan_for(b, a)


def test_refuses_tied_lm_head(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(tie=True),
        torch.float32,
        {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "lm_head"]},
    )
    with pytest.raises(Refused, match="ties lm_head"):
        plan_for(b, a)


def test_refuses_modules_to_save_embedding_of_tied_base(tmp_path):
    """PEFT unties the embeddings (writes lm_head.weight, flips tie_word_embeddings): not a same-layout merge."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]}
    b, a = make_case(tmp_path, llama(tie=True), torch.float32, kw)
    with pytest.raises(Refused, match="unties them"):
        plan_for(b, a)


def test_refuses_tied_config_with_stored_lm_head(tmp_path):
    b, a = make_case(
        tmp_path,
        llama(tie=True),
        torch.float32,
        {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens"]},
    )
    sd = load_file(b / "model.safetensors")
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, b / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Refused, match="also store lm_head.weight"):
        plan_for(b, a)


def test_refuses_keys_damaged_by_old_peft_name_stripping(simple):
    """PEFT <= 0.17 saved an adapter named 'lora' as '…q_proj_A.weight'; PEFT ignores such keys when loading."""
    b, a = simple
    _edit_weights(a, lambda sd: {k.replace(".lora_", "_"): v for k, v in sd.items()})
    with pytest.raises(Refused, match="damaged on disk"):
        plan_for(b, a)


def test_find_base(simple, tmp_path, monkeypatch):
    from ckpt_tool_peft.merge import find_base

    from ckpt_tool.errors import NotFound

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    b, a = simple
    info = detect_adapter(a)
    info.details["config"]["base_model_name_or_path"] = str(b)
    assert find_base(info) == b
    info.details["config"]["base_model_name_or_path"] = "../base"  # relative: tried from the adapter dir too
    assert find_base(info).resolve() == b.resolve()
    info.details["config"]["base_model_name_or_path"] = "meta-llama/Llama-3-8B"
    with pytest.raises(NotFound, match="'meta-llama/Llama-3-8B'.*not in the local Hugging Face cache"):
        find_base(info)  # h9: a Hub id is looked up in the local cache; the error names it and --base
    info.details["config"]["base_model_name_or_path"] = None
    assert find_base(info) is None


# ------------------------------------------------------------------------- operation and CLI


def test_merge_operation_finds_local_base(tmp_path):
    from ckpt_tool.ops.merge import merge

    kw = {
        "r": 4,
        "lora_alpha": 8,
        "use_dora": True,
        "target_modules": ["q_proj", "down_proj"],
        "modules_to_save": ["lm_head"],
    }
    b, a = make_case(tmp_path, llama(), torch.bfloat16, kw)
    _edit_config(a, base_model_name_or_path=str(b))  # a local dir: found without --base
    out = tmp_path / "merged"
    summary = merge(a, out=out)
    assert summary["lora"]["modules"] == 4 and summary["replaced_tensors"] == ["lm_head.weight"]
    ref = reference(tmp_path, b, a, torch.bfloat16)
    assert_bit_equal(read_dir(out), ref)
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors", "config.json", "generation_config.json", "ckpt-tool-provenance.json"
    }
    merge(a, out=tmp_path / "merged_fp32", dtype="fp32")  # from_pretrained(base, dtype=fp32), then merge
    assert_bit_equal(read_dir(tmp_path / "merged_fp32"), reference(tmp_path / "r32", b, a, torch.float32))
    _edit_config(a, base_model_name_or_path="some-org/not-here")
    from ckpt_tool.errors import NotFound

    with pytest.raises(NotFound, match="base model") as exc:
        merge(a, out=tmp_path / "merged2")
    assert "--base" in exc.value.hint
    assert not (tmp_path / "merged2" / "model.safetensors").exists()


def test_cli_merge(tmp_path, cli):
    from ckpt_tool.cli import COMMANDS

    if "ckpt_tool.commands.merge" not in COMMANDS:
        pytest.skip("the merge command is not registered in ckpt_tool.cli.COMMANDS yet")
    b, a = make_case(
        tmp_path,
        gpt2(),
        torch.float32,
        {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_bias": True},
    )
    out = tmp_path / "merged"
    r = cli("merge", a, "--base", b, "--out", out)
    assert r.code == 0, r.stderr
    assert_bit_equal(read_dir(out), reference(tmp_path, b, a, torch.float32))
    _edit_config(a, init_lora_weights="pissa")
    r = cli("merge", a, "--base", b, "--out", tmp_path / "merged3")
    assert r.code == 6 and "rewrote the base" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "merged3").exists() or not any((tmp_path / "merged3").iterdir())


def test_resharding_with_force_removes_stale_weights(tmp_path, cli):
    """A leftover model.safetensors next to new shards would be loaded instead of them: it counts as output."""
    b, a = make_case(tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    out = tmp_path / "st"
    assert cli("merge", a, "--base", b, "--out", out, "--quiet").code == 0
    assert (out / "model.safetensors").is_file()
    res = cli("merge", a, "--base", b, "--out", out, "--max-shard-size", "20KB")
    assert res.code == 6 and "model.safetensors" in res.stderr
    res = cli("merge", a, "--base", b, "--out", out, "--max-shard-size", "20KB", "--force", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["removed"] == [str(out / "model.safetensors")]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and sorted(p.name for p in out.glob("model*.safetensors")) == shards
    assert_bit_equal(read_dir(out), reference(tmp_path, b, a, torch.float32))
