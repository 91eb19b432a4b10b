"""PEFT merges that used to give silent wrong results (exit 0, no warning), against the real peers.

* non-finite / absurd LoRA scales (Python's JSON reads NaN, Infinity, 1e999) are refused, inspect warns;
* the adapter's own folder as --out, or this adapter's earlier merge as --base, is refused;
* fan_in_fan_out follows the module type (nn.Linear: never transposed) exactly as PEFT forces it;
* the base is loaded in the dtype PEFT's default flow loads it in (config.json), and --dtype X is
  from_pretrained(base, dtype=X): both bit for bit against merge_and_unload;
* target_parameters (MoE experts) and AdaLoRA adapters are described correctly and refused by merge
  as Unsupported (exit 5).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_peft_merge import (
    assert_bit_equal,
    gpt2,
    llama,
    make_case,
    ours,
    read_dir,
    reference,
)

pytestmark = pytest.mark.interop


def _raw_config(ad: Path, **raw: str) -> None:
    """Set config values as raw JSON text (NaN / Infinity / 1e999 are not JSON, but Python reads them)."""
    text = (ad / "adapter_config.json").read_text()
    cfg = json.loads(text)
    for key in raw:
        cfg[key] = f"@@{key}@@"
    text = json.dumps(cfg)
    for key, value in raw.items():
        text = text.replace(f'"@@{key}@@"', value)
    (ad / "adapter_config.json").write_text(text)


def _edit(ad: Path, **changes: object) -> None:
    cfg = json.loads((ad / "adapter_config.json").read_text())
    cfg.update(changes)
    (ad / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.fixture
def simple(tmp_path):
    return make_case(tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})


# --------------------------------------------------------------------------------- 1. scales


@pytest.mark.parametrize(
    "raw",
    [
        {"lora_alpha": "NaN"},
        {"lora_alpha": "Infinity"},
        {"lora_alpha": "1e999"},
        {"lora_alpha": "-Infinity"},
        {"lora_alpha": "1e300"},
        {"alpha_pattern": '{"q_proj": NaN}'},
        {"alpha_pattern": '{"v_proj": 1e999}'},
        {"rank_pattern": '{"q_proj": 100000000}'},
    ],
    ids=lambda r: next(iter(r.values())),
)
def test_non_finite_or_absurd_scale_refused_and_inspect_warns(simple, tmp_path, cli, raw):
    b, a = simple
    _raw_config(a, **raw)
    out = tmp_path / "m"
    res = cli("merge", a, "--base", b, "--out", out)
    assert res.code == 4, res.stderr
    assert "NaN, inf or garbage" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or not any(out.iterdir())
    res = cli("inspect", a)
    assert res.code == 0, res.stderr
    assert "unusable LoRA scale" in res.stdout or "unusable LoRA scale" in res.stderr


def test_sane_scales_still_merge(simple, tmp_path):
    b, a = simple
    _edit(a, lora_alpha=1000.0)
    ref = reference(tmp_path, b, a, torch.float32)
    assert_bit_equal(ours(tmp_path, b, a), ref)


# --------------------------------------------------------------------- 2. own folder, own output


def test_out_into_the_adapter_folder_refused(simple, tmp_path, cli):
    b, a = simple
    before = sorted(p.name for p in a.iterdir())
    res = cli("merge", a, "--base", b, "--out", a)
    assert res.code == 6, res.stderr
    assert "adapter_config.json" in res.stderr and "twice" in res.stderr
    assert sorted(p.name for p in a.iterdir()) == before


def test_out_into_the_save_root_of_a_named_adapter_refused(tmp_path, cli):
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    b, a = make_case(tmp_path, llama(), torch.float32, kw, extra_adapters={"other": kw})
    res = cli("merge", a / "other", "--base", b, "--out", a)
    assert res.code == 6, res.stderr
    assert not (a / "model.safetensors").exists() and not (a / "config.json").exists()


def test_previous_merge_output_as_base_refused(simple, tmp_path, cli):
    """The merged folder has no adapter files; its safetensors header records which adapter went in."""
    b, a = simple
    out = tmp_path / "merged"
    assert cli("merge", a, "--base", b, "--out", out, "--quiet").code == 0
    res = cli("merge", a, "--base", out, "--out", tmp_path / "twice")
    assert res.code == 6, res.stderr
    assert "delta twice" in res.stderr
    assert not (tmp_path / "twice").exists()
    # sharded outputs carry the mark in every shard
    out2 = tmp_path / "merged2"
    assert cli("merge", a, "--base", b, "--out", out2, "--max-shard-size", "20KB", "--quiet").code == 0
    assert len(list(out2.glob("model-*.safetensors"))) > 1
    assert cli("merge", a, "--base", out2, "--out", tmp_path / "twice2").code == 6
    # a different adapter may be merged on top of that output (stacking is legitimate)
    from test_peft_merge import _edit_weights

    other = tmp_path / "other_adapter"
    shutil.copytree(a, other)
    _edit_weights(other, lambda sd: {k: v * 2 for k, v in sd.items()})
    assert cli("merge", other, "--base", out, "--out", tmp_path / "stacked", "--quiet").code == 0


def test_base_inside_the_adapter_folder_refused(simple, tmp_path, cli):
    b, a = simple
    res = cli("merge", a, "--base", a / "adapter_model.safetensors", "--out", tmp_path / "m")
    assert res.code == 6, res.stderr


# ---------------------------------------------------------------------------- 3. fan_in_fan_out


def test_fan_in_fan_out_true_on_llama_linear_is_ignored_like_peft(tmp_path):
    """PEFT forces fan_in_fan_out=False for nn.Linear (with a warning): the square q_proj / o_proj delta
    must not be transposed because adapter_config.json says true."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj", "k_proj"]}
    b, a = make_case(tmp_path, llama(), torch.bfloat16, kw)
    _edit(a, fan_in_fan_out=True)  # PEFT saved false (it mutates the config); other tools write true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference(tmp_path, b, a, torch.bfloat16)
    got = ours(tmp_path, b, a)
    assert_bit_equal(got, ref)
    base = read_dir(b)
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


def test_fan_in_fan_out_false_on_gpt2_conv1d_is_forced_true_like_peft(tmp_path):
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": False}
    b, a = make_case(tmp_path, gpt2(), torch.float32, kw)
    _edit(a, fan_in_fan_out=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference(tmp_path, b, a, torch.float32)
    assert_bit_equal(ours(tmp_path, b, a), ref)


def test_square_conv1d_without_model_type_decided_from_the_other_weights(tmp_path):
    """No model_type in config.json: a square c_proj is a Conv1D when the model's non-square c_attn is
    stored (in, out); the bits still equal PEFT's (which knows the module classes)."""
    from test_peft_merge import plan_for

    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}
    b, a = make_case(tmp_path, gpt2(), torch.float32, kw)
    ref = reference(tmp_path, b, a, torch.float32)
    anon = tmp_path / "anon_base"
    shutil.copytree(b, anon)
    cfg = json.loads((anon / "config.json").read_text())
    cfg.pop("model_type")
    (anon / "config.json").write_text(json.dumps(cfg))
    plan = plan_for(anon, a)
    assert plan.summary["lora"]["fan_in_fan_out_modules"] == 6
    from test_peft_merge import apply_plan

    assert_bit_equal(apply_plan(plan), ref)
    # only square c_proj targeted: nothing says which module class it is -> refused, not guessed
    kw2 = {"r": 4, "lora_alpha": 8, "target_modules": ["attn.c_proj"], "fan_in_fan_out": True}
    b2, a2 = make_case(tmp_path / "two", gpt2(), torch.float32, kw2)
    shutil.copy(anon / "config.json", b2 / "config.json")
    from ckpt_tool.errors import Refused

    with pytest.raises(Refused, match="Conv1D"):
        plan_for(b2, a2)


# --------------------------------------------------------------------------------------- 4. dtype


def _set_config_dtype(base: Path, **keys: object) -> None:
    cfg = json.loads((base / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    cfg.update(keys)
    (base / "config.json").write_text(json.dumps(cfg))


def _peft_default(tmp: Path, base: Path, ad: Path, **from_pretrained: object) -> dict[str, torch.Tensor]:
    """PEFT's documented flow, with from_pretrained's own default dtype unless given."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, **from_pretrained)
    merged = PeftModel.from_pretrained(model, ad).merge_and_unload()
    out = tmp / f"peft-default-{len(list(tmp.glob('peft-default-*')))}"
    merged.save_pretrained(out)
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_config_dtype_differing_from_stored_follows_peft_default(tmp_path, cli, key):
    """A bf16-stored base whose config.json says float32: AutoModelForCausalLM.from_pretrained(base)
    loads it as fp32 (dtype="auto" follows config.json) and merges in fp32; so must we, and say so."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"], "use_dora": True}
    b, a = make_case(tmp_path, llama(), torch.bfloat16, kw)
    _set_config_dtype(b, **{key: "float32"})
    want = _peft_default(tmp_path, b, a)
    assert {v.dtype for v in want.values()} == {torch.float32}
    out = tmp_path / "m"
    res = cli("merge", a, "--base", b, "--out", out, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["load_dtype"] == "F32" and summary["dtype_source"] == f"config.json {key}"
    assert "warning:" in res.stderr and "config.json" in res.stderr and summary["warnings"]
    assert_bit_equal(read_dir(out), want)


def test_dtype_flag_casts_the_base_before_the_merge(tmp_path, cli):
    """--dtype bf16 on an fp32 base == from_pretrained(base, dtype=torch.bfloat16) + merge_and_unload."""
    kw = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "gate_proj", "embed_tokens"], "modules_to_save": ["lm_head"]}
    b, a = make_case(tmp_path, llama(), torch.float32, kw)
    want = _peft_default(tmp_path, b, a, dtype=torch.bfloat16)
    out = tmp_path / "m"
    res = cli("merge", a, "--base", b, "--out", out, "--dtype", "bf16", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["dtype_source"] == "--dtype"
    assert "warning:" not in res.stderr
    assert_bit_equal(read_dir(out), want)


def test_matching_config_dtype_changes_nothing(tmp_path, cli):
    b, a = make_case(tmp_path, llama(), torch.bfloat16, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    out = tmp_path / "m"
    res = cli("merge", a, "--base", b, "--out", out)
    assert res.code == 0 and "warning:" not in res.stderr
    assert_bit_equal(read_dir(out), _peft_default(tmp_path, b, a))


def test_config_dtype_that_is_not_a_float_is_unsupported(tmp_path, cli):
    b, a = make_case(tmp_path, llama(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    _set_config_dtype(b, dtype="int8")
    res = cli("merge", a, "--base", b, "--out", tmp_path / "m")
    assert res.code == 5 and "--dtype" in res.stderr
    assert cli("merge", a, "--base", b, "--out", tmp_path / "m", "--dtype", "fp32", "--quiet").code == 0


# ------------------------------------------------------------------- 6. target_parameters, AdaLoRA


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=96, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
    )
    return MixtralForCausalLM(cfg)


def test_target_parameters_moe_adapter(tmp_path, cli):
    """LoRA on Mixtral's 3-D expert parameters: A (r*E, in), B (out, r*E), nested .base_layer per parameter."""
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
          "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
    b, a = make_case(tmp_path, _mixtral(), torch.float32, kw)
    keys = load_file(a / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.0.mlp.experts.lora_A.weight"].shape[0] == 4 * 4
    res = cli("inspect", a, "--json")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)
    assert not [w for w in info["warnings"] if "disagree" in w], info["warnings"]
    targets = info["lora"]["targets"]
    assert "q_proj" in targets and "mlp.experts.gate_up_proj" in targets and "mlp.experts.down_proj" in targets
    res = cli("inspect", a)
    assert "mlp.experts.gate_up_proj" in res.stdout
    res = cli("merge", a, "--base", b, "--out", tmp_path / "m")
    assert res.code == 5, res.stderr
    assert "target_parameters" in res.stderr and "nn.Parameter" in res.stderr
    assert not (tmp_path / "m").exists()


def _adalora(tmp: Path, allocate: bool) -> tuple[Path, Path]:
    from peft import AdaLoraConfig, get_peft_model

    model = llama()
    base = tmp / "base"
    model.save_pretrained(base)
    cfg = AdaLoraConfig(init_r=6, target_r=2, tinit=1, tfinal=1, deltaT=1, total_step=4,
                        target_modules=["q_proj", "v_proj"], lora_alpha=8)
    pm = get_peft_model(model, cfg)
    if allocate:
        opt = torch.optim.SGD(pm.parameters(), lr=0.1)
        x = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
        for step in range(4):
            pm(input_ids=x, labels=x).loss.backward()
            opt.step()
            pm.base_model.update_and_allocate(step)
            opt.zero_grad()
    ad = tmp / "adalora"
    pm.save_pretrained(ad)
    return base, ad


@pytest.mark.parametrize("allocate", [True, False], ids=["after-rank-allocation", "before"])
def test_adalora_rank_from_tensors_and_merge_unsupported(tmp_path, cli, allocate):
    b, a = _adalora(tmp_path, allocate)
    cfg = json.loads((a / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["init_r"] == 6  # r is AdaLoRA's unused field
    res = cli("inspect", a, "--json", "--tensors")
    assert res.code == 0, res.stderr
    info = json.loads(res.stdout)
    lora = info["lora"]
    ranks = {t["shape"][0] for t in info["tensor_list"] if t["name"].endswith(".lora_A")}
    assert lora["r"] == max(ranks) and lora["r"] != 8 and lora["init_r"] == 6
    assert not [w for w in info["warnings"] if "ZeRO-3" in w or "disagree" in w], info["warnings"]
    if allocate:
        assert 0 in ranks or len(ranks) > 1  # the masks pruned modules differently
    res = cli("merge", a, "--base", b, "--out", tmp_path / "m")
    assert res.code == 5, res.stderr
    assert "AdaLoRA" in res.stderr and "SVD" in res.stderr


def _glm4_moe():
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(0)
    cfg = Glm4MoeConfig(
        hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=96, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, max_position_embeddings=64, head_dim=8, n_group=1, topk_group=1,
    )
    return Glm4MoeForCausalLM(cfg)


def test_tensors_transformers_keeps_in_fp32_stay_fp32(tmp_path, cli):
    """GLM-4 MoE keeps e_score_correction_bias in fp32 (_keep_in_fp32_modules_strict) when loaded in bf16:
    an fp32-stored base with config.json dtype bfloat16 merges like PEFT's default flow, tensor for tensor."""
    b, a = make_case(tmp_path, _glm4_moe(), torch.float32, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"]})
    _set_config_dtype(b, dtype="bfloat16")
    want = _peft_default(tmp_path, b, a)
    assert want["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert want["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    out = tmp_path / "m"
    assert cli("merge", a, "--base", b, "--out", out, "--quiet").code == 0
    assert_bit_equal(read_dir(out), want)


def test_keep_fp32_table_matches_installed_transformers():
    import transformers
    from ckpt_tool_peft.merge import KEEP_FP32
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    found = {}
    for model_type, cls_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        loose, strict = getattr(cls, "_keep_in_fp32_modules", None), getattr(cls, "_keep_in_fp32_modules_strict", None)
        if loose or strict:
            found[model_type] = (tuple(sorted(loose or ())), tuple(sorted(strict or ())))
    assert {k: (tuple(sorted(v[0])), tuple(sorted(v[1]))) for k, v in KEEP_FP32.items()} == found
