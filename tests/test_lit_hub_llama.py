"""LitGPT ↔ transformers conversion of the LLaMA-like families (hub/llama.py, gemma.py, qwen.py).

Against the peers, with tiny models built from real configs:

* lit → hf: our steps give exactly what LitGPT's ``convert_lit_checkpoint`` writes (same keys, dtypes,
  ``torch.equal``), and transformers loads the result with our ``config.json`` (no missing / unexpected
  keys) and computes LitGPT's logits;
* hf → lit: our steps give exactly what ``convert_hf_checkpoint`` writes, and ``litgpt.GPT`` built from our
  ``lit_config`` loads it strictly and computes transformers' logits;
* lit → hf → lit (composed) is the identity, bit for bit;
* bad inputs are refused with the right error, naming what.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpt_tool_lit.hub import family_for_hf, family_for_lit

from ckpt_tool.errors import InvalidFile, Refused, Unsupported
from ckpt_tool.io.tensors import dtype_name
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import compose, evaluate

pytestmark = pytest.mark.interop

TINY_LIT = dict(
    n_layer=2, n_embd=32, n_head=4, intermediate_size=48, vocab_size=96, padded_vocab_size=96, block_size=64
)
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
# name -> (LitGPT model name, overrides, tie the head)
LIT_CASES: dict[str, tuple[str, dict[str, Any], bool]] = {
    "llama2-mha": ("Llama-2-7b-hf", {}, False),
    # a short original context, so that the llama3 rope scaling changes most frequencies of a 12-token test
    "llama3-gqa-rope": (
        "Llama-3.1-8B",
        {"n_query_groups": 2, "rope_adjustments": {**LLAMA3_ROPE, "original_max_seq_len": 16}},
        False,
    ),
    "mistral-window": ("Mistral-7B-v0.1", {"n_query_groups": 2, "sliding_window_size": 4}, False),
    "mixtral": ("Mixtral-8x7B-v0.1", {"n_query_groups": 2, "n_expert": 4, "n_expert_per_token": 2}, False),
    "gemma": ("Gemma-7b", {"head_size": 16}, True),
    "gemma2": (
        "Gemma-2-2b",
        {
            "head_size": 16,
            "n_query_groups": 2,
            "sliding_window_size": 4,
            "sliding_window_indices": [1, 0],
            "attention_scores_scalar": 12,
        },
        True,
    ),
    "gemma3-tied": (
        "Gemma-3-1b-it",
        {
            "head_size": 16,
            "n_query_groups": 1,
            "sliding_window_size": 4,
            "sliding_window_indices": [1, 0],
            "rope_indices": [1, 0],
        },
        True,
    ),
    "gemma3-untied-rope": (
        "Gemma-3-4b-it",
        {
            "head_size": 16,
            "n_query_groups": 2,
            "sliding_window_size": 4,
            "sliding_window_indices": [1, 0],
            "rope_indices": [1, 0],
        },
        False,
    ),
    "qwen2.5": ("Qwen2.5-0.5B", {"n_query_groups": 2}, False),
    "qwen3": ("Qwen3-0.6B", {"n_query_groups": 2, "head_size": 16}, False),
    "qwen3-moe": (
        "Qwen3-30B-A3B",
        {
            "n_query_groups": 2,
            "head_size": 16,
            "n_expert": 4,
            "n_expert_per_token": 2,
            "moe_intermediate_size": 24,
        },
        False,
    ),
}
TOKENS = torch.tensor([[3, 17, 42, 5, 88, 1, 9, 63, 20, 7, 50, 31]])  # longer than the sliding windows


def infos(sd: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, dtype_name(t.dtype), tuple(t.shape), "mem", 0, t.numel()) for k, t in sd.items()}


def run(steps, sd: dict[str, torch.Tensor], sink: str) -> dict[str, torch.Tensor]:
    return evaluate(steps, lambda _input, name: sd[name]).get(sink, {})


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for k, t in theirs.items():
        assert ours[k].dtype == t.dtype, k
        assert torch.equal(ours[k], t), k


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm weights too: LitGPT and transformers initialise them to 1 or 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def lit_model(case: str, dtype: torch.dtype = torch.float32):
    import litgpt

    name, over, tie = LIT_CASES[case]
    config = litgpt.Config.from_name(name, **{**TINY_LIT, **over})
    model = randomized(litgpt.GPT(config), 0)
    if tie:
        with torch.no_grad():
            model.lm_head.weight.copy_(model.transformer.wte.weight)
    sd = {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}
    return config, model, sd, tie


def litgpt_to_hf(config, sd: dict[str, torch.Tensor], tmp: Path) -> dict[str, torch.Tensor]:
    """LitGPT's own ``convert_lit_checkpoint`` on a checkpoint dir."""
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
    from litgpt.utils import save_config

    src = tmp / "lit"
    src.mkdir()
    save_config(config, src)
    torch.save(sd, src / "lit_model.pth")
    convert_lit_checkpoint(src, tmp / "litgpt-hf")
    return torch.load(tmp / "litgpt-hf" / "model.pth", weights_only=True)


def save_hf(tensors: dict[str, torch.Tensor], hf: dict[str, Any], directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir()
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(hf))
    return directory


def load_hf(directory: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager"
    )
    assert not any(
        info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    ), info
    return model.eval()


# --- lit -> hf ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LIT_CASES))
def test_lit_to_hf_matches_litgpt_and_loads_in_transformers(case, tmp_path):
    config, model, sd, tie = lit_model(case)
    cfg = dataclasses.asdict(config)
    fam = family_for_lit(cfg)
    hf = fam.hf_config(cfg, tie=tie)
    ours = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub", tie=tie), sd, "hub")

    theirs = litgpt_to_hf(config, sd, tmp_path)
    assert hf["tie_word_embeddings"] is tie and ("lm_head.weight" in ours) is not tie
    if not tie and "lm_head.weight" not in theirs:
        # LitGPT's Gemma converters drop the head even when it was trained apart: ours keeps it
        assert "Gemma" in config.name and ours["lm_head.weight"] is sd["lm_head.weight"]
        theirs = {**theirs, "lm_head.weight": sd["lm_head.weight"]}
    assert_same(ours, theirs)

    hf_model = load_hf(save_hf(ours, hf, tmp_path / "hf"))
    with torch.no_grad():
        want = model(TOKENS)
        got = hf_model(TOKENS).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_lit_to_hf_keeps_dtypes_bit_for_bit(tmp_path):
    config, _, sd, _ = lit_model("llama3-gqa-rope", torch.bfloat16)
    cfg = dataclasses.asdict(config)
    steps = family_for_lit(cfg).to_hf_steps(cfg, infos(sd), "in", "hub")
    assert {o.dtype for s in steps for o in s.outs} == {"BF16"}
    assert_same(run(steps, sd, "hub"), litgpt_to_hf(config, sd, tmp_path))


def test_litgpt_gemma_2b_name_routes_gemma1_to_the_gemma2_converter(tmp_path):
    """LitGPT routes by ``name.startswith("Gemma-2")``, so its own Gemma 1 ``Gemma-2b`` gets Gemma-2 norm names
    (``pre_feedforward_layernorm``), which GemmaForCausalLM does not have; ours reads the structure."""
    import litgpt

    config = litgpt.Config.from_name("Gemma-2b", **{**TINY_LIT, "head_size": 16, "n_query_groups": 1})
    model = randomized(litgpt.GPT(config), 3)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.transformer.wte.weight)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    theirs = litgpt_to_hf(config, sd, tmp_path)
    assert "model.layers.0.pre_feedforward_layernorm.weight" in theirs

    cfg = dataclasses.asdict(config)
    fam = family_for_lit(cfg)
    hf = fam.hf_config(cfg)
    assert hf["model_type"] == "gemma"
    ours = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    assert ours["model.layers.0.post_attention_layernorm.weight"] is sd["transformer.h.0.norm_2.weight"]
    hf_model = load_hf(save_hf(ours, hf, tmp_path / "hf"))
    with torch.no_grad():
        assert (hf_model(TOKENS).logits - model(TOKENS)).abs().max().item() <= 1e-4


# --- hf -> lit ----------------------------------------------------------------------------------------

TINY_HF = dict(
    vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
LAYERS = ["sliding_attention", "full_attention"]


def _hf_cases() -> dict[str, tuple[Any, str]]:
    import transformers as T

    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    return {
        "llama3": (T.LlamaConfig(**TINY_HF, rope_theta=500000.0, rope_scaling=llama3), "Llama-3.1-8B"),
        "mistral": (T.MistralConfig(**TINY_HF, sliding_window=4), "Mistral-7B-v0.1"),
        "mixtral": (
            T.MixtralConfig(**TINY_HF, num_local_experts=4, num_experts_per_tok=2),
            "Mixtral-8x7B-v0.1",
        ),
        "gemma": (T.GemmaConfig(**TINY_HF, head_dim=16), "Gemma-7b"),
        "gemma2": (
            T.Gemma2Config(**TINY_HF, head_dim=16, sliding_window=4, query_pre_attn_scalar=12),
            "Gemma-2-2b",
        ),
        "gemma3-tied": (
            T.Gemma3TextConfig(**TINY_HF, head_dim=16, sliding_window=4, layer_types=LAYERS),
            "Gemma-3-1b-it",
        ),
        "gemma3-untied-rope": (
            T.Gemma3TextConfig(
                **TINY_HF,
                head_dim=16,
                sliding_window=4,
                layer_types=LAYERS,
                tie_word_embeddings=False,
                rope_scaling={"rope_type": "linear", "factor": 8.0},
            ),
            "Gemma-3-4b-it",
        ),  # fmt: skip
        "qwen2": (T.Qwen2Config(**TINY_HF), "Qwen2.5-0.5B"),
        "qwen3": (T.Qwen3Config(**TINY_HF, head_dim=16), "Qwen3-0.6B"),
        "qwen3-moe": (
            T.Qwen3MoeConfig(
                **TINY_HF,
                head_dim=16,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=24,
                norm_topk_prob=True,
            ),
            "Qwen3-30B-A3B",
        ),
    }


HF_CASES = [
    "llama3",
    "mistral",
    "mixtral",
    "gemma",
    "gemma2",
    "gemma3-tied",
    "gemma3-untied-rope",
    "qwen2",
    "qwen3",
    "qwen3-moe",
]


def hf_model_dir(case: str, tmp: Path):
    from transformers import AutoModelForCausalLM

    config, lit_name = _hf_cases()[case]
    model = randomized(AutoModelForCausalLM.from_config(config, attn_implementation="eager"), 1)
    directory = tmp / "hf"
    model.save_pretrained(directory)
    return model, directory, lit_name


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_to_lit_matches_litgpt_and_runs_in_litgpt(case, tmp_path):
    import litgpt
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
    from safetensors.torch import load_file

    model, directory, lit_name = hf_model_dir(case, tmp_path)
    hf = json.loads((directory / "config.json").read_text())
    sd = load_file(directory / "model.safetensors")
    fam = family_for_hf(hf)
    cfg = fam.lit_config(hf)
    ours = run(fam.to_lit_steps(cfg, hf, infos(sd), "in", "out"), sd, "out")

    convert_hf_checkpoint(directory, model_name=lit_name)
    assert_same(ours, torch.load(directory / "lit_model.pth", weights_only=True))

    lit = litgpt.GPT(litgpt.Config(**cfg))
    lit.load_state_dict(ours, strict=True)
    with torch.no_grad():
        got = lit.eval()(TOKENS)
        want = model(TOKENS).logits
    assert (got - want).abs().max().item() <= 1e-4


# --- round trip -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LIT_CASES))
def test_lit_to_hf_to_lit_is_the_identity(case):
    config, _, sd, tie = lit_model(case)
    cfg = dataclasses.asdict(config)
    fam = family_for_lit(cfg)
    hf = fam.hf_config(cfg, tie=tie)
    to_hf = fam.to_hf_steps(cfg, infos(sd), "in", "hub", tie=tie)
    hub = {o.name: TensorInfo(o.name, o.dtype, o.shape, "hub", 0, 0) for s in to_hf for o in s.outs}
    back_cfg = family_for_hf(hf).lit_config(hf)
    to_lit = family_for_hf(hf).to_lit_steps(back_cfg, hf, hub, "hub", "out")
    assert_same(run(compose(to_hf, to_lit, "hub"), sd, "out"), sd)
    # the config survives too (transformers' legacy rope keys read back), up to what LitGPT does not use
    import litgpt

    same = dataclasses.asdict(litgpt.Config(**back_cfg))
    for key in ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "padded_vocab_size", "norm_eps",
                "mlp_class_name", "rope_base", "rope_adjustments", "sliding_window_size", "attention_logit_softcapping",
                "final_logit_softcapping", "norm_qk", "attn_bias", "n_expert", "rope_local_base_freq"):  # fmt: skip
        assert same[key] == cfg[key], key


ARCH_KEYS = (
    "n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "padded_vocab_size", "norm_eps", "mlp_class_name",
    "rope_base", "rope_adjustments", "sliding_window_size", "sliding_window_indices", "attention_logit_softcapping",
    "final_logit_softcapping", "norm_qk", "attn_bias", "n_expert", "n_expert_per_token", "rope_local_base_freq",
    "rope_indices", "intermediate_size", "moe_intermediate_size", "attention_scores_scalar", "block_size",
    "scale_embeddings", "post_attention_norm", "post_mlp_norm", "gelu_approximate",
)  # fmt: skip


def test_every_litgpt_registry_model_of_these_families_converts_or_is_refused():
    """All of LitGPT's own (full-size) configs: config.json and back describes the same LitGPT model, or the
    model is refused naming the setting transformers' architecture lacks (LayerNorm: StableLM, OLMo-1)."""
    from litgpt.config import Config, configs

    converted: set[str] = set()
    refused: dict[str, str] = {}
    unclaimed: set[str] = set()
    for entry in configs:
        cfg = dataclasses.asdict(Config(**entry))
        try:
            fam = family_for_lit(cfg)
        except Unsupported:
            unclaimed.add(cfg["name"])  # no family (OLMo-2, ...)
            continue
        try:
            hf = fam.hf_config(cfg)
        except Unsupported as exc:
            refused[cfg["name"]] = exc.message
            continue
        back = dataclasses.asdict(Config(**family_for_hf(hf).lit_config(hf)))
        if cfg["rope_condense_ratio"] != 1:  # positions / r is linear rope scaling by r
            cfg["rope_adjustments"] = {"factor": float(cfg["rope_condense_ratio"])}
        assert {k: back[k] for k in ARCH_KEYS} == {k: cfg[k] for k in ARCH_KEYS}, cfg["name"]
        converted.add(hf["model_type"])
    assert converted == {
        "llama",
        "mistral",
        "mixtral",
        "gemma",
        "gemma2",
        "gemma3_text",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "phi",
        "phi3",
        "falcon",
        "gpt_neox",
    }
    assert "norm_class_name = 'LayerNorm'" in refused["OLMo-1B-hf"]
    assert all(msg for msg in refused.values())  # every refusal names what transformers' architecture lacks
    assert len(refused) + len(unclaimed) < 40, sorted(refused)


# --- refusals ---------------------------------------------------------------------------------------------


def _llama():
    config, _, sd, _ = lit_model("llama3-gqa-rope")
    return dataclasses.asdict(config), sd


def test_refuses_a_lit_model_transformers_cannot_express():
    import litgpt

    cfg = dataclasses.asdict(litgpt.Config.from_name("OLMo-1B-hf", **TINY_LIT))  # LLaMA MLP with LayerNorm
    with pytest.raises(Unsupported, match="norm_class_name = 'LayerNorm'"):
        family_for_lit(cfg).hf_config(cfg)
    with pytest.raises(Unsupported, match="no LitGPT ↔ Hugging Face conversion"):
        family_for_lit({**cfg, "name": "x", "mlp_class_name": "NoSuchMLP"})


def test_refuses_unsupported_hf_configs():
    with pytest.raises(Unsupported, match="model_type 'bert'"):
        family_for_hf({"model_type": "bert"})
    with pytest.raises(Unsupported, match="vision tower"):
        family_for_hf({"model_type": "gemma3"}).lit_config({"model_type": "gemma3"})
    llama = {"model_type": "llama", **TINY_HF}
    with pytest.raises(Unsupported, match="attention_bias"):
        family_for_hf(llama).lit_config({**llama, "attention_bias": True})
    with pytest.raises(Unsupported, match="'yarn'"):
        family_for_hf(llama).lit_config({**llama, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(Unsupported, match="norm_topk_prob"):
        family_for_hf({"model_type": "qwen3_moe"}).lit_config(
            {"model_type": "qwen3_moe", **TINY_HF, "moe_intermediate_size": 8}
        )


def test_refuses_geometry_that_does_not_match_the_tensors():
    cfg, sd = _llama()
    with pytest.raises(
        InvalidFile,
        match=r"transformer\.h\.0\.attn\.qkv\.weight: shape \[64, 32\], the config gives \[48, 32\]",
    ):
        family_for_lit(cfg).to_hf_steps({**cfg, "n_query_groups": 1}, infos(sd), "in", "hub")
    with pytest.raises(InvalidFile, match="describes .* tensors"):  # a hostile layer count costs nothing
        family_for_lit(cfg).to_hf_steps({**cfg, "n_layer": 4096}, infos(sd), "in", "hub")


def test_refuses_missing_and_unexpected_tensors_by_name():
    cfg, sd = _llama()
    fam = family_for_lit(cfg)
    partial = {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.proj.weight"}
    with pytest.raises(InvalidFile, match=r"1 missing: transformer\.h\.1\.mlp\.proj\.weight"):
        fam.to_hf_steps(cfg, infos(partial), "in", "hub")
    extra = {**sd, "transformer.h.0.attn.qkv.bias": torch.zeros(64)}
    with pytest.raises(InvalidFile, match=r"1 not part of that model: transformer\.h\.0\.attn\.qkv\.bias"):
        fam.to_hf_steps(cfg, infos(extra), "in", "hub")
    lora = {**sd, "transformer.h.0.attn.qkv.lora_A": torch.zeros(4, 32)}
    with pytest.raises(Unsupported, match="LoRA tensor"):
        fam.to_hf_steps(cfg, infos(lora), "in", "hub")
    hf = fam.hf_config(cfg)
    hub = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    del hub["lm_head.weight"]  # untied config, no head
    with pytest.raises(InvalidFile, match=r"1 missing: lm_head\.weight"):
        family_for_hf(hf).to_lit_steps(cfg, hf, infos(hub), "hub", "out")


def test_refuses_to_tie_a_head_trained_apart():
    config, _, sd, _ = lit_model("gemma3-untied-rope")
    cfg = dataclasses.asdict(config)
    steps = family_for_lit(cfg).to_hf_steps(cfg, infos(sd), "in", "hub")  # Gemma ties by default
    with pytest.raises(Refused, match="lm_head.weight differs from transformer.wte.weight"):
        run(steps, sd, "hub")


def test_original_config_json_gives_token_ids_and_the_tie():
    cfg, sd = _llama()
    fam = family_for_lit(cfg)
    base = {
        "model_type": "llama",
        "hidden_size": 32,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128009],
        "tie_word_embeddings": True,
    }
    hf = fam.hf_config(cfg, base=base, dtype="BF16")
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["torch_dtype"]) == (
        128000,
        [128001, 128009],
        "bfloat16",
    )
    assert hf["tie_word_embeddings"] is True
    tied = {**sd, "lm_head.weight": sd["transformer.wte.weight"]}
    hub = run(fam.to_hf_steps(cfg, infos(tied), "in", "hub", base=base), tied, "hub")
    assert "lm_head.weight" not in hub
    with pytest.raises(Refused, match="hidden_size = 4096"):
        fam.hf_config(cfg, base={**base, "hidden_size": 4096})


def test_old_inv_freq_buffers_are_consumed_explicitly():
    cfg, sd = _llama()
    fam = family_for_lit(cfg)
    hf = fam.hf_config(cfg)
    hub = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    hub["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    steps = family_for_hf(hf).to_lit_steps(cfg, hf, infos(hub), "hub", "out")
    assert any(not s.outs and "inv_freq" in s.why for s in steps)
    assert_same(run(steps, hub, "out"), sd)


# --- defaults the code relies on ---------------------------------------------------------------------------


def test_litgpt_config_defaults_are_pinned():
    from ckpt_tool_lit.hub.model_config import LIT_DEFAULTS
    from litgpt import Config

    fields = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(Config)
    }
    assert fields == LIT_DEFAULTS


def test_transformers_config_defaults_are_pinned():
    import transformers as T
    from ckpt_tool_lit.hub import gemma, llama, qwen

    classes = {
        "llama": T.LlamaConfig, "mistral": T.MistralConfig, "mixtral": T.MixtralConfig, "gemma": T.GemmaConfig,
        "gemma2": T.Gemma2Config, "gemma3_text": T.Gemma3TextConfig, "qwen2": T.Qwen2Config, "qwen3": T.Qwen3Config,
        "qwen3_moe": T.Qwen3MoeConfig,
    }  # fmt: skip
    for module in (llama, gemma, qwen):
        for model_type, defaults in module.HF_DEFAULTS.items():
            config = classes[model_type]()
            rope = config.rope_parameters
            for key, want in defaults.items():
                if key == "rope_theta":
                    have = rope.get("full_attention", rope)["rope_theta"]
                elif key == "rope_local_base_freq":
                    have = rope["sliding_attention"]["rope_theta"]
                elif key == "sliding_window_pattern":
                    have = config._sliding_window_pattern
                else:
                    have = getattr(config, key)
                assert have == want, (model_type, key)
