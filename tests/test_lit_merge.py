"""LitGPT LoRA merge: bit-identical to the real ``litgpt merge_lora`` (0.5.13), and its refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lit_merge_helpers import (
    assert_bit_equal,
    build_lora_model,
    lit_config,
    litgpt_merge,
    make_adapter,
    make_base,
    make_run,
    unwrap_copy,
)

QKV_COMBOS = [("query",), ("key",), ("value",), ("query", "value"), ("query", "key"), ("key", "value"),
              ("query", "key", "value")]
ALL = ("query", "key", "value", "projection", "mlp", "head")


def _ours(cli, final: Path, out: Path, *extra: object) -> dict[str, torch.Tensor]:
    res = cli("merge", final, "--out", out, "--json", *extra)
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["outputs"][0] == str(out / "lit_model.pth")
    return torch.load(out / "lit_model.pth", weights_only=True)


@pytest.mark.interop
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("flags", QKV_COMBOS, ids=lambda f: "+".join(x[0] for x in f))
def test_qkv_bit_exact_gqa(tmp_path, cli, flags, groups):
    base, final = make_run(tmp_path, flags, n_query_groups=groups, seed=groups)
    want = litgpt_merge(final, base, tmp_path)
    assert_bit_equal(_ours(cli, final, tmp_path / "merged"), want)


ALL_COMBOS = [tuple(f for i, f in enumerate(ALL) if mask >> i & 1) for mask in range(1, 64)]


@pytest.mark.interop
@pytest.mark.parametrize("index", range(len(ALL_COMBOS)), ids=lambda i: "+".join(x[:4] for x in ALL_COMBOS[i]))
def test_every_target_combination_bit_exact(tmp_path, cli, index):
    """All 63 non-empty subsets of q/k/v/projection/mlp/head; the GQA layout rotates through 1, 2, 4 groups."""
    flags = ALL_COMBOS[index]
    base, final = make_run(tmp_path, flags, n_query_groups=(1, 2, 4)[index % 3], seed=index)
    assert_bit_equal(_ours(cli, final, tmp_path / "merged"), litgpt_merge(final, base, tmp_path))


@pytest.mark.interop
@pytest.mark.parametrize(
    "flags", [("projection",), ("mlp",), ("head",), ALL], ids=["proj", "mlp", "head", "all"]
)
@pytest.mark.parametrize(
    "base_dtype,lora_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
     (torch.float32, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float16)],
    ids=["fp32", "bf16", "bf16base-fp32lora", "fp32base-bf16lora", "fp16", "bf16base-fp16lora"],
)
def test_targets_and_dtypes_bit_exact(tmp_path, cli, flags, base_dtype, lora_dtype):
    base, final = make_run(tmp_path, flags, base_dtype=base_dtype, lora_dtype=lora_dtype, n_query_groups=2)
    want = litgpt_merge(final, base, tmp_path)
    got = _ours(cli, final, tmp_path / "merged")
    assert_bit_equal(got, want)
    # LitGPT gives the merged file the LoRA tensors' dtype
    assert {v.dtype for v in got.values()} == {lora_dtype}


@pytest.mark.interop
@pytest.mark.parametrize("groups", [1, 4])
def test_bf16_qv_gqa_and_mha(tmp_path, cli, groups):
    base, final = make_run(tmp_path, ("query", "value"), base_dtype=torch.bfloat16, n_query_groups=groups)
    assert_bit_equal(_ours(cli, final, tmp_path / "m"), litgpt_merge(final, base, tmp_path))


@pytest.mark.interop
def test_gptneox_mlp_bit_exact(tmp_path, cli):
    base, final = make_run(tmp_path, ALL, mlp="GptNeoxMLP", n_query_groups=4)
    assert_bit_equal(_ours(cli, final, tmp_path / "m"), litgpt_merge(final, base, tmp_path))


@pytest.mark.interop
def test_wrapped_base(tmp_path, cli):
    """A base stored as {"model": ...}: LitGPT's merge cannot read it; ours equals LitGPT on an unwrapped copy."""
    base, final = make_run(tmp_path, ALL, base_dtype=torch.bfloat16, wrap_base=True)
    plain = unwrap_copy(base, tmp_path / "plain_base")
    want = litgpt_merge(final, plain, tmp_path)
    res = cli("merge", final, "--base", base, "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["base_wrapper"] == "model"
    got = torch.load(tmp_path / "m" / "lit_model.pth", weights_only=True)
    assert_bit_equal(got, want)  # and the output is a bare dict, like LitGPT's


@pytest.mark.interop
def test_default_output_beside_adapter_and_mmap_loadable(tmp_path, cli):
    base, final = make_run(tmp_path, ("query", "value"))
    want = litgpt_merge(final, base, tmp_path)
    res = cli("merge", final, "--quiet")
    assert res.code == 0, res.stderr
    out = final / "lit_model.pth"
    assert_bit_equal(torch.load(out, weights_only=True, mmap=True), want)
    # a second merge refuses: the existing file is looked at and recognised as the merge
    res = cli("merge", final)
    assert res.code == 6
    assert "merged already" in res.stderr and "--force" in res.stderr
    before = out.stat().st_mtime_ns
    res = cli("merge", final, "--force", "--quiet")
    assert res.code == 0, res.stderr
    assert out.stat().st_mtime_ns >= before
    assert_bit_equal(torch.load(out, weights_only=True), want)
    # the merged final/ as --base would add the delta twice
    res = cli("merge", final, "--base", final, "--out", tmp_path / "twice")
    assert res.code == 6 and "delta twice" in res.stderr


@pytest.mark.interop
def test_out_dir_is_complete_checkpoint(tmp_path, cli):
    from litgpt.utils import check_valid_checkpoint_dir

    _base, final = make_run(tmp_path, ("query", "value"))
    out = tmp_path / "merged"
    res = cli("merge", final, "--out", out, "--quiet")
    assert res.code == 0, res.stderr
    for name in ("lit_model.pth", "model_config.yaml", "tokenizer.json", "tokenizer_config.json",
                 "hyperparameters.yaml", "prompt_style.yaml"):
        assert (out / name).is_file(), name
    check_valid_checkpoint_dir(out, raise_error=True)
    assert not [p for p in out.iterdir() if p.name.startswith(".ckpt-tool-tmp-")]


@pytest.mark.interop
def test_dtype_override(tmp_path, cli):
    base, final = make_run(tmp_path, ALL, base_dtype=torch.float32)
    want = litgpt_merge(final, base, tmp_path)
    res = cli("merge", final, "--out", tmp_path / "bf", "--dtype", "bf16", "--json")
    assert res.code == 0, res.stderr
    got = torch.load(tmp_path / "bf" / "lit_model.pth", weights_only=True)
    assert_bit_equal(got, {k: v.to(torch.bfloat16) for k, v in want.items()})


@pytest.mark.interop
def test_existing_output_needs_force(tmp_path, cli):
    _base, final = make_run(tmp_path, ("query",))
    out = tmp_path / "m"
    out.mkdir()
    (out / "lit_model.pth").write_bytes(b"precious")
    res = cli("merge", final, "--out", out)
    assert res.code == 6 and "already exists" in res.stderr and "--force" in res.stderr
    assert (out / "lit_model.pth").read_bytes() == b"precious"
    res = cli("merge", final, "--out", out, "--force", "--quiet")
    assert res.code == 0, res.stderr
    torch.load(out / "lit_model.pth", weights_only=True)


@pytest.mark.interop
def test_dry_run_writes_nothing(tmp_path, cli):
    _base, final = make_run(tmp_path, ("query", "value"))
    res = cli("merge", final, "--out", tmp_path / "m", "--dry-run", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["dry_run"] is True and summary["tensors"]["changed"] == 2
    assert not (tmp_path / "m").exists()
    res = cli("merge", final, "--dry-run")
    assert res.code == 0 and "would write" in res.stdout
    assert not (final / "lit_model.pth").exists()


@pytest.mark.interop
def test_base_from_hyperparameters_relative_and_checkpoints_prefix(tmp_path, cli, monkeypatch):
    import yaml

    base, final = make_run(tmp_path, ("query",))
    (tmp_path / "checkpoints").mkdir()
    base.rename(tmp_path / "checkpoints" / "base")
    hp = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    hp["checkpoint_dir"] = "base"  # as typed on the command line; LitGPT also tries checkpoints/<that>
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    monkeypatch.chdir(tmp_path)
    res = cli("merge", final, "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["base"].endswith("checkpoints/base")
    hp["checkpoint_dir"] = "nowhere"
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    res = cli("merge", final, "--out", tmp_path / "m2")
    assert res.code == 3 and "--base" in res.stderr


@pytest.mark.interop
def test_mismatched_architecture_lists_all_problems(tmp_path, cli):
    """An intermediate step-*/ adapter against a base of another architecture: one error, every mismatch."""
    config = lit_config(flags=ALL, n_query_groups=2)
    model = build_lora_model(config)
    other_cfg = lit_config(flags=ALL, n_embd=64, n_head=4, n_query_groups=4, n_layer=3)
    other = make_base(tmp_path / "other_base", other_cfg, build_lora_model(other_cfg), torch.float32)
    step = make_adapter(tmp_path / "out" / "step-000010", config, model, torch.float32, other)
    res = cli("merge", step, "--out", tmp_path / "m")
    assert res.code == 6, res.stderr
    err = res.stderr
    assert err.count("error:") == 1
    for needle in ("mismatch", "n_embd", "attn.qkv", "attn.proj", "mlp.fc_1", "lm_head", "input features"):
        assert needle in err, needle
    assert not (tmp_path / "m").exists()


@pytest.mark.interop
def test_rank_disagreeing_with_hyperparameters_refused(tmp_path, cli):
    import yaml

    _base, final = make_run(tmp_path, ("query", "value"), r=2)
    hp = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    hp["lora_r"] = 4
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    res = cli("merge", final, "--out", tmp_path / "m")
    assert res.code == 6 and "r=4" in res.stderr


@pytest.mark.interop
def test_adapter_v1_refused(tmp_path, cli):
    import litgpt.adapter

    cfg = litgpt.adapter.Config(
        name="tiny", n_layer=2, n_embd=32, n_head=4, n_query_groups=2, block_size=16, vocab_size=64,
        padded_vocab_size=64, mlp_class_name="LLaMAMLP", intermediate_size=48, norm_class_name="RMSNorm",
        bias=False, adapter_prompt_length=4, adapter_start_layer=0,
    )
    model = litgpt.adapter.GPT(cfg)
    base = tmp_path / "base"
    base.mkdir()
    sd = {k: v for k, v in model.state_dict().items() if "adapter_wte" not in k and "gating_factor" not in k}
    torch.save(sd, base / "lit_model.pth")
    final = tmp_path / "out" / "final"
    final.mkdir(parents=True)
    ad = {k: v for k, v in model.state_dict().items() if "adapter_wte" in k or "gating_factor" in k}
    torch.save({"model": ad}, final / "lit_model.pth.adapter")
    from litgpt.utils import save_config

    save_config(cfg, final)
    res = cli("merge", final, "--base", base, "--out", tmp_path / "m")
    assert res.code == 6, res.stderr
    assert "cannot be folded" in res.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.interop
def test_output_never_replaces_an_input(tmp_path, cli):
    base, final = make_run(tmp_path, ("query",))
    res = cli("merge", final, "--out", base, "--force")
    assert res.code == 6 and "replace an input" in res.stderr


def test_plan_rejects_base_with_lora_tensors(tmp_path):
    """Plan-level check without the CLI: a "base" that still holds LoRA tensors is a training state."""
    from ckpt_tool_lit.merge import plan_merge

    from ckpt_tool.errors import Refused
    from ckpt_tool.model import CheckpointInfo, TensorInfo
    from ckpt_tool.ops.merge_plan import MergeOptions

    def t(n, s):
        return TensorInfo(n, "F32", s, "x", 0, s[0] * s[1])
    adapter = CheckpointInfo("a", "lit", "adapter", "lora", tensors=[t("lm_head.lora_A", (2, 4)), t("lm_head.lora_B", (8, 2))],
                             lora={"r": 2, "alpha": 4, "head": True}, details={"dir": str(tmp_path)})
    base = CheckpointInfo("b", "lit", "model", tensors=[t("lm_head.weight", (8, 4)), t("lm_head.lora_A", (2, 4))])
    with pytest.raises(Refused, match="holds LoRA tensors"):
        plan_merge(adapter, base, MergeOptions())
    base.tensors = [t("lm_head.weight", (8, 5))]
    with pytest.raises(Refused, match="5 input features"):
        plan_merge(adapter, base, MergeOptions())
    base.tensors = [t("lm_head.weight", (8, 4))]
    plan = plan_merge(adapter, base, MergeOptions(dtype="BF16"))
    assert plan.out_dtype == {"lm_head.weight": "BF16"} and set(plan.changes) == {"lm_head.weight"}
    assert plan.default_out == tmp_path / "lit_model.pth" and os.fspath(plan.default_out)


@pytest.mark.interop
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_delta_still_bit_exact(tmp_path, cli, monkeypatch, dtype):
    """Add the base weight in many odd-sized row blocks; still LitGPT's bits (and diff agrees)."""
    import ckpt_tool_lit.merge as lit_merge

    monkeypatch.setattr(lit_merge, "ADD_BLOCK_ELEMS", 7 * 32)  # 7 rows of 32 columns per block
    base, final = make_run(tmp_path, ALL, base_dtype=dtype)
    want = litgpt_merge(final, base, tmp_path)
    assert_bit_equal(_ours(cli, final, tmp_path / "m"), want)
    res = cli("diff", tmp_path / "m" / "lit_model.pth", tmp_path / "ref_final" / "lit_model.pth")
    assert res.code == 0 and "bit-equal" in res.stdout, res.stdout + res.stderr


def test_plan_refuses_unknown_qkv_targets_and_alpha(tmp_path):
    """Old checkpoints without hyperparameters: ambiguous q/k/v coverage or unknown alpha are refused, not guessed."""
    from ckpt_tool_lit.merge import plan_merge

    from ckpt_tool.errors import Refused
    from ckpt_tool.model import CheckpointInfo, TensorInfo
    from ckpt_tool.ops.merge_plan import MergeOptions

    def t(n, s):
        return TensorInfo(n, "F32", s, "x", 0, s[0] * s[1])
    m = "transformer.h.0.attn.qkv"
    tensors = [t(f"{m}.lora_A", (4, 32)), t(f"{m}.lora_B", (64, 2))]
    cfg = {"n_head": 4, "n_query_groups": 4, "n_embd": 32}
    base = CheckpointInfo("b", "lit", "model", tensors=[t(f"{m}.weight", (96, 32))])
    lora = {"r": 2, "alpha": 4, "query": None, "key": None, "value": None}
    adapter = CheckpointInfo("a", "lit", "adapter", "lora", tensors=tensors, lora=lora,
                             details={"dir": str(tmp_path), "model_config": cfg})
    with pytest.raises(Refused, match="cannot tell which of query/key/value"):
        plan_merge(adapter, base, MergeOptions())
    adapter.lora = {**lora, "query": True, "value": True, "alpha": None}
    with pytest.raises(Refused, match="alpha is unknown"):
        plan_merge(adapter, base, MergeOptions())
    adapter.lora = {**lora, "query": True, "key": False, "value": True}
    plan = plan_merge(adapter, base, MergeOptions())
    assert set(plan.changes) == {f"{m}.weight"} and plan.summary["lora"]["scales"] == [2.0]


@pytest.mark.interop
def test_moe_bit_exact(tmp_path, cli):
    """LLaMAMoE: LoRA on the router gate and on every expert's fc_1/fc_2/proj (lora_mlp)."""
    base, final = make_run(tmp_path, ALL, mlp="LLaMAMoE", n_expert=2, n_expert_per_token=1, moe_intermediate_size=24,
                           norm_class_name="RMSNorm", bias=False, parallel_residual=False)
    want = litgpt_merge(final, base, tmp_path)
    assert any(".mlp.experts.1.fc_2.weight" in k for k in want) and any(k.endswith(".mlp.gate.weight") for k in want)
    assert_bit_equal(_ours(cli, final, tmp_path / "m"), want)


def test_plan_refuses_legacy_attn_lora(tmp_path):
    from ckpt_tool_lit.merge import plan_merge

    from ckpt_tool.errors import Refused
    from ckpt_tool.model import CheckpointInfo, TensorInfo
    from ckpt_tool.ops.merge_plan import MergeOptions

    def t(n, s):
        return TensorInfo(n, "F32", s, "x", 0, s[0] * s[1])  # noqa: E731
    m = "transformer.h.0.attn.attn"
    adapter = CheckpointInfo("a", "lit", "adapter", "lora", tensors=[t(f"{m}.lora_A", (4, 32)), t(f"{m}.lora_B", (64, 2))],
                             lora={"r": 2, "alpha": 4, "query": True, "value": True}, details={"dir": str(tmp_path)})
    base = CheckpointInfo("b", "lit", "model", tensors=[t(f"{m}.weight", (96, 32))])
    with pytest.raises(Refused, match="legacy fused attention") as exc:
        plan_merge(adapter, base, MergeOptions())
    assert "--upgrade-attn" in (exc.value.hint or "")


@pytest.mark.interop
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_merge_to_hf_equals_litgpt_merge_then_litgpt_convert(tmp_path, cli, groups):
    """`merge final --to hf` is one streaming pass: LitGPT's merge_lora followed by its convert_lit_checkpoint,
    bit for bit, into a directory transformers loads directly."""
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base, final = make_run(tmp_path, ALL, n_query_groups=groups)
    ref = tmp_path / "ref_final"
    merged = litgpt_merge(final, base, tmp_path)  # leaves ref_final/lit_model.pth
    assert (ref / "lit_model.pth").is_file()
    shutil.copy(base / "model_config.yaml", ref)  # as `litgpt finetune lora` copies it (no lora_* fields)
    convert_lit_checkpoint(ref, tmp_path / "litgpt-hf")
    want = torch.load(tmp_path / "litgpt-hf" / "model.pth", weights_only=True)
    out = tmp_path / "ours-hf"
    res = cli("merge", final, "--to", "hf", "--out", out, "--json")
    assert res.code == 0, res.stderr
    got = load_file(out / "model.safetensors")
    assert_bit_equal(got, want)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert len(got) == len(merged) + 2 * 2  # each layer's fused qkv became q, k, v (2 layers)
