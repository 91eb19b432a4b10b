"""LitGPT ↔ Hugging Face full-model conversion for GPT-NeoX, Phi, Phi-3/4 and Falcon, against the peers.

Every case builds a tiny real model (LitGPT from a registered name so its name-based dispatch applies;
transformers from config objects), runs our steps in memory (``evaluate``) and checks:

* the tensors equal LitGPT's own converter (``convert_lit_checkpoint`` on a temp dir; LitGPT's
  ``convert_hf_checkpoint`` with the tiny config) bit for bit: same keys, dtypes and bits;
* the converted model loads in the other library strictly (no missing / unexpected keys) and gives the
  same logits (fp32, max |Δ| ≤ 1e-4) — this is what proves the generated config.json / model_config.yaml;
* lit → hf → lit is bit-identical;
* bad inputs are refused with the tool's error naming the tensor or field.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpt_tool_lit.hub import family_for_hf, family_for_lit
from ckpt_tool_lit.hub.model_config import LitModel

from ckpt_tool.errors import CkptError, InvalidFile, Refused, Unsupported
from ckpt_tool.io.tensors import dtype_name
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import evaluate

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("quick_torch")]


def resolve_lit(cfg: dict[str, Any]) -> dict[str, Any]:
    """A LitGPT config resolved as ``Config.__post_init__`` does (with ``rope_n_elem``)."""
    return LitModel(cfg).v

TINY = {"n_layer": 2, "block_size": 64, "vocab_size": 100, "padded_vocab_size": 128}
# (case id, LitGPT registry name, tiny overrides, family name)
LIT_CASES = [
    ("pythia", "pythia-14m", {"n_embd": 64, "n_head": 4}, "neox"),
    ("pythia-seq", "pythia-14m", {"n_embd": 64, "n_head": 4, "parallel_residual": False, "rotary_percentage": 0.5}, "neox"),
    ("phi-1_5", "phi-1_5", {"n_embd": 64, "n_head": 4}, "phi"),
    ("phi-2-gqa", "phi-2", {"n_embd": 80, "n_head": 4, "n_query_groups": 2}, "phi"),
    ("phi-3", "Phi-3-mini-4k-instruct", {"n_embd": 64, "n_head": 4, "intermediate_size": 96, "sliding_window_size": 5}, "phi"),
    ("phi-4", "phi-4", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96}, "phi"),
    ("phi-4-mini", "Phi-4-mini-instruct", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96}, "phi"),
    ("falcon-7b", "falcon-7b", {"n_embd": 64, "n_head": 4}, "falcon"),
    ("falcon-7b-mha", "falcon-7b", {"n_embd": 64, "n_head": 4, "n_query_groups": 4}, "falcon"),
    ("falcon2-like", "falcon-7b", {"n_embd": 64, "n_head": 8, "n_query_groups": 2}, "falcon"),
    ("falcon-40b", "falcon-40b", {"n_embd": 64, "n_head": 8, "n_query_groups": 2}, "falcon"),
    ("falcon-180B", "falcon-180B", {"n_embd": 64, "n_head": 8, "n_query_groups": 4}, "falcon"),
]


def infos(sd: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(k, dtype_name(v.dtype), tuple(v.shape), "", 0, v.numel()) for k, v in sd.items()}


def run(steps: list, sd: dict[str, torch.Tensor], sink: str) -> dict[str, torch.Tensor]:
    return evaluate(steps, lambda _input, name: sd[name]).get(sink, {})


def assert_bits_equal(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.dtype, k
        assert torch.equal(ours[k], t), k


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (LayerNorm weights and biases too), so a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def lit_model(name: str, overrides: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    from litgpt import GPT, Config

    cfg = Config.from_name(name, **{**TINY, **overrides})
    model = GPT(cfg).eval()
    randomize(model)
    if name.startswith("Phi-4-mini"):  # tied in Hugging Face: a LitGPT conversion starts with lm_head == wte
        with torch.no_grad():
            model.lm_head.weight.copy_(model.transformer.wte.weight)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def litgpt_to_hf(cfg: Any, sd: dict[str, torch.Tensor], tmp: Path) -> dict[str, torch.Tensor]:
    """LitGPT's own ``convert_lit_checkpoint`` (its dispatch by name), on a temp dir."""
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
    from litgpt.utils import save_config

    ck = tmp / "lit"
    ck.mkdir()
    torch.save(sd, ck / "lit_model.pth")
    save_config(cfg, ck)
    with contextlib.redirect_stdout(io.StringIO()):
        convert_lit_checkpoint(ck, tmp / "ref")
    return torch.load(tmp / "ref" / "model.pth", weights_only=True)


def litgpt_to_lit(cfg: Any, hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """LitGPT's own ``convert_hf_checkpoint`` on a saved transformers dir, with our tiny config as its named one."""
    import litgpt.scripts.convert_hf_checkpoint as conv

    monkeypatch.setattr(conv.Config, "from_name", classmethod(lambda cls, name, **kw: cfg))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        conv.convert_hf_checkpoint(hf_dir, model_name=cfg.name)
    sd = torch.load(hf_dir / "lit_model.pth", weights_only=True)
    (hf_dir / "lit_model.pth").unlink()
    (hf_dir / "model_config.yaml").unlink()
    return sd


def save_hf(tensors: dict[str, torch.Tensor], config: dict[str, Any], out: Path) -> Path:
    from safetensors.torch import save_file

    out.mkdir()
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, out / "model.safetensors", {"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def load_hf(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4


# --- lit → hf ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "name", "overrides", "family"), LIT_CASES, ids=[c[0] for c in LIT_CASES])
def test_lit_to_hf_matches_litgpt_and_transformers(tmp_path, case, name, overrides, family):
    model, sd = lit_model(name, overrides)
    cfg = asdict(model.config)
    fam = family_for_lit(cfg)
    assert fam.name == family
    hf = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    assert_bits_equal(hf, litgpt_to_hf(model.config, sd, tmp_path))

    hf_model = load_hf(save_hf(hf, fam.hf_config(cfg), tmp_path / "hf"))
    x = ids()
    with torch.no_grad():
        assert_close(hf_model(x).logits, model(x))


@pytest.mark.parametrize("case", ["phi-2-gqa", "phi-4-mini", "falcon-40b"])
def test_lit_to_hf_keeps_bf16_bits(tmp_path, case):
    _, name, overrides, _ = next(c for c in LIT_CASES if c[0] == case)
    model, sd = lit_model(name, overrides)
    sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    cfg = asdict(model.config)
    hf = run(family_for_lit(cfg).to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    assert_bits_equal(hf, litgpt_to_hf(model.config, sd, tmp_path))


@pytest.mark.parametrize(("case", "name", "overrides", "family"), LIT_CASES, ids=[c[0] for c in LIT_CASES])
def test_lit_hf_lit_round_trip_is_bit_identical(case, name, overrides, family):
    model, sd = lit_model(name, overrides)
    cfg = asdict(model.config)
    fam = family_for_lit(cfg)
    hf = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    hf_cfg = fam.hf_config(cfg)
    assert family_for_hf(hf_cfg) is fam
    back_cfg = fam.lit_config(hf_cfg)
    ours, theirs = resolve_lit(back_cfg), resolve_lit(cfg)
    for f in ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "padded_vocab_size", "intermediate_size",
              "rope_n_elem", "rope_base", "parallel_residual", "shared_attention_norm", "bias", "lm_head_bias",
              "norm_class_name", "mlp_class_name", "norm_eps", "gelu_approximate", "sliding_window_size"):  # fmt: skip
        assert ours[f] == theirs[f], f
    assert family_for_lit(back_cfg) is fam
    back = run(fam.to_lit_steps(back_cfg, hf_cfg, infos(hf), "in", "out"), hf, "out")
    assert_bits_equal(back, sd)


def test_phi_4_reasoning_keeps_its_untied_head(tmp_path):
    # LitGPT's convert_lit_checkpoint drops lm_head for every name starting with "Phi-4", which leaves the
    # untied phi-4 family (phi-4, Phi-4-reasoning) with a random head in transformers; only Phi-4-mini is tied
    model, sd = lit_model("Phi-4-reasoning", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96})
    cfg = asdict(model.config)
    fam = family_for_lit(cfg)
    hf = run(fam.to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")
    ref = litgpt_to_hf(model.config, sd, tmp_path)
    assert set(hf) - set(ref) == {"lm_head.weight"}
    assert_bits_equal({k: hf[k] for k in ref}, ref)
    hf_cfg = fam.hf_config(cfg)
    assert hf_cfg["tie_word_embeddings"] is False
    x = ids()
    with torch.no_grad():
        assert_close(load_hf(save_hf(hf, hf_cfg, tmp_path / "hf"))(x).logits, model(x))


# Hub config.json files as published (transformers 4.x spelling), and the LitGPT registry entry each is.
HUB_CONFIGS = {
    "pythia-70m": {"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
                   "hidden_act": "gelu", "hidden_size": 512, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
                   "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
                   "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25,
                   "tie_word_embeddings": False, "use_parallel_residual": True, "vocab_size": 50304},
    "phi-2": {"_name_or_path": "microsoft/phi-2", "architectures": ["PhiForCausalLM"], "hidden_act": "gelu_new",
              "hidden_size": 2560, "intermediate_size": 10240, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
              "qk_layernorm": False, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "vocab_size": 51200},
    "phi-4": {"architectures": ["Phi3ForCausalLM"], "hidden_act": "silu", "hidden_size": 5120,
              "intermediate_size": 17920, "max_position_embeddings": 16384, "model_type": "phi3",
              "num_attention_heads": 40, "num_hidden_layers": 40, "num_key_value_heads": 10,
              "original_max_position_embeddings": 16384, "rms_norm_eps": 1e-05, "rope_scaling": None,
              "rope_theta": 250000, "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 100352},
    "falcon-7b": {"alibi": False, "architectures": ["FalconForCausalLM"], "bias": False, "hidden_size": 4544,
                  "layer_norm_epsilon": 1e-05, "model_type": "falcon", "multi_query": True,
                  "new_decoder_architecture": False, "num_attention_heads": 71, "num_hidden_layers": 32,
                  "parallel_attn": True, "vocab_size": 65024},
    "falcon-40b": {"alibi": False, "architectures": ["FalconForCausalLM"], "bias": False, "hidden_size": 8192,
                   "layer_norm_epsilon": 1e-05, "model_type": "falcon", "multi_query": True,
                   "new_decoder_architecture": True, "num_attention_heads": 128, "num_hidden_layers": 60,
                   "num_kv_heads": 8, "parallel_attn": True, "vocab_size": 65024},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_config_json_of_real_models_gives_litgpt_own_config(name):
    from litgpt import Config

    hf = HUB_CONFIGS[name]
    fam = family_for_hf(hf)
    ours = resolve_lit(fam.lit_config(hf))
    theirs = resolve_lit(asdict(Config.from_name(name)))
    for f in ("n_layer", "n_embd", "n_head", "head_size", "n_query_groups", "padded_vocab_size", "intermediate_size",
              "rope_n_elem", "rope_base", "parallel_residual", "shared_attention_norm", "bias", "lm_head_bias",
              "norm_class_name", "mlp_class_name", "norm_eps", "gelu_approximate", "sliding_window_size",
              "block_size"):  # fmt: skip
        assert ours[f] == theirs[f], f
    assert family_for_lit(ours) is fam


# --- hf → lit ---------------------------------------------------------------------------------------


def _hf_cases() -> list[tuple[str, str, dict[str, Any]]]:
    common = {"vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 2, "max_position_embeddings": 64}
    return [
        ("pythia", "GPTNeoXConfig", {**common, "num_attention_heads": 4, "intermediate_size": 256}),
        ("neox-seq-tied", "GPTNeoXConfig", {**common, "num_attention_heads": 4, "intermediate_size": 192,
                                            "use_parallel_residual": False, "tie_word_embeddings": True,
                                            "hidden_act": "gelu_new", "rotary_emb_base": 5000}),
        ("phi-2-gqa", "PhiConfig", {**common, "num_attention_heads": 4, "num_key_value_heads": 2,
                                    "intermediate_size": 128, "partial_rotary_factor": 0.4}),
        ("phi-3", "Phi3Config", {**common, "num_attention_heads": 4, "intermediate_size": 96, "sliding_window": 5,
                                 "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
        ("phi-4-mini", "Phi3Config", {**common, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "intermediate_size": 96, "partial_rotary_factor": 0.75,
                                      "tie_word_embeddings": True, "rope_theta": 250000.0,
                                      "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
        ("falcon-7b-tied", "FalconConfig", {**common, "num_attention_heads": 4}),
        ("falcon-mha", "FalconConfig", {**common, "num_attention_heads": 4, "multi_query": False,
                                        "tie_word_embeddings": False}),
        ("falcon-40b", "FalconConfig", {**common, "num_attention_heads": 8, "num_kv_heads": 2,
                                        "new_decoder_architecture": True, "tie_word_embeddings": False}),
        ("falcon2", "FalconConfig", {**common, "num_attention_heads": 8, "num_kv_heads": 2,
                                     "new_decoder_architecture": True, "num_ln_in_parallel_attn": 1,
                                     "ffn_hidden_size": 96, "tie_word_embeddings": False}),
        # LitGPT's copy_weights_falcon has no names for Falcon biases (KeyError): logits only
        ("falcon-bias", "FalconConfig", {**common, "num_attention_heads": 4, "bias": True}),
    ]  # fmt: skip


HF_CASES = _hf_cases()


def hf_model(cls_name: str, kwargs: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor]]:
    import transformers
    from safetensors.torch import load_file

    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    randomize(model, seed=2)
    model.save_pretrained(out)
    return model, json.loads((out / "config.json").read_text()), load_file(out / "model.safetensors")


@pytest.mark.parametrize(("case", "cls_name", "kwargs"), HF_CASES, ids=[c[0] for c in HF_CASES])
def test_hf_to_lit_matches_litgpt_and_transformers(tmp_path, monkeypatch, case, cls_name, kwargs):
    from litgpt import GPT, Config

    model, hf, tensors = hf_model(cls_name, kwargs, tmp_path / "hf")
    fam = family_for_hf(hf)
    lit_cfg = fam.lit_config(hf)
    assert family_for_lit(lit_cfg) is fam
    lit = run(fam.to_lit_steps(lit_cfg, hf, infos(tensors), "in", "out"), tensors, "out")

    ref = lit if case == "falcon-bias" else litgpt_to_lit(Config(**lit_cfg), tmp_path / "hf", monkeypatch)
    extra = set(lit) - set(ref)
    # LitGPT's Falcon and GPT-NeoX converters leave a tied head out (its model then cannot load); we
    # write the embeddings into lm_head.weight as LitGPT does for its tied families
    assert extra <= {"lm_head.weight"}
    if extra:
        assert torch.equal(lit["lm_head.weight"], lit["transformer.wte.weight"])
    assert_bits_equal({k: lit[k] for k in ref}, ref)

    gpt = GPT(Config(**lit_cfg)).eval()
    gpt.load_state_dict(lit, strict=True)
    x = ids()
    with torch.no_grad():
        assert_close(gpt(x), model(x).logits)


# --- refusals ---------------------------------------------------------------------------------------


def _lit(case: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    _, name, overrides, _ = next(c for c in LIT_CASES if c[0] == case)
    model, sd = lit_model(name, overrides)
    return asdict(model.config), sd


def _to_hf(cfg: dict[str, Any], sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return run(family_for_lit(cfg).to_hf_steps(cfg, infos(sd), "in", "hub"), sd, "hub")


def test_geometry_that_disagrees_with_the_tensors_is_refused():
    cfg, sd = _lit("falcon-40b")
    with pytest.raises(InvalidFile, match=r"transformer\.h\.0\.attn\.qkv\.weight: shape \[96, 64\], the config gives \[128, 64\]"):
        _to_hf({**cfg, "n_query_groups": 4}, sd)
    cfg, sd = _lit("phi-3")
    with pytest.raises(InvalidFile, match=r"mlp\.fc_1\.weight: shape"):
        _to_hf({**cfg, "intermediate_size": 128}, sd)
    cfg, sd = _lit("pythia")
    with pytest.raises(InvalidFile, match="1000 layers but the checkpoint holds only 28 tensors"):
        _to_hf({**cfg, "n_layer": 1000}, sd)
    with pytest.raises(InvalidFile, match="past the limit"):
        _to_hf({**cfg, "n_layer": 10**6}, sd)


def test_missing_tensor_is_named():
    cfg, sd = _lit("pythia")
    del sd["transformer.h.1.mlp.proj.weight"]
    with pytest.raises(InvalidFile, match=r"1 missing: transformer\.h\.1\.mlp\.proj\.weight"):
        _to_hf(cfg, sd)
    cfg, sd = _lit("phi-2-gqa")
    fam, hf = family_for_lit(cfg), _to_hf(cfg, sd)
    del hf["model.layers.0.self_attn.k_proj.bias"]
    hf_cfg = fam.hf_config(cfg)
    with pytest.raises(InvalidFile, match=r"model\.layers\.0\.self_attn\.k_proj\.bias"):
        fam.to_lit_steps(fam.lit_config(hf_cfg), hf_cfg, infos(hf), "in", "out")


def test_unknown_tensor_is_named():
    cfg, sd = _lit("phi-2-gqa")
    sd["transformer.h.0.attn.qkv.lora_A"] = torch.zeros(8, 80)
    with pytest.raises(Unsupported, match=r"e\.g\. transformer\.h\.0\.attn\.qkv\.lora_A") as exc:
        _to_hf(cfg, sd)
    assert "merge the adapter first" in exc.value.hint
    cfg, sd = _lit("falcon-7b")
    sd["transformer.h.0.attn.qkv.bias"] = torch.zeros(96)  # falcon-7b has no biases
    with pytest.raises(InvalidFile, match=r"1 not part of that model: transformer\.h\.0\.attn\.qkv\.bias"):
        _to_hf(cfg, sd)


def test_neox_buffers_of_old_transformers_saves_are_skipped_like_litgpt():
    cfg, sd = _lit("pythia")
    fam = family_for_lit(cfg)
    hf = _to_hf(cfg, sd)
    hf["gpt_neox.layers.0.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
    hf["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)
    hf["gpt_neox.layers.1.attention.rotary_emb.inv_freq"] = torch.ones(2)
    hf_cfg = fam.hf_config(cfg)
    assert_bits_equal(run(fam.to_lit_steps(fam.lit_config(hf_cfg), hf_cfg, infos(hf), "in", "out"), hf, "out"), sd)


def test_outdated_phi_layout_is_refused():
    cfg, sd = _lit("phi-2-gqa")
    fam = family_for_lit(cfg)
    hf_cfg = fam.hf_config(cfg)
    with pytest.raises(Unsupported, match="early remote-code Phi"):
        fam.to_lit_steps(fam.lit_config(hf_cfg), hf_cfg, {"layers.0.wte.weight": infos(sd)["lm_head.weight"]}, "in", "out")


def test_drifted_head_of_a_tied_model_is_refused_not_dropped(tmp_path):
    cfg, sd = _lit("phi-4-mini")
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(Refused, match="lm_head.weight differs from transformer.wte.weight") as exc:
        _to_hf(cfg, sd)
    assert "'Phi-4-untied'" in exc.value.hint
    # the hint works: under another name the model converts untied and transformers computes the same logits
    model, _ = lit_model("Phi-4-mini-instruct", dict(next(c for c in LIT_CASES if c[0] == "phi-4-mini")[2]))
    with torch.no_grad():
        model.lm_head.weight.add_(1)
    untied = {**cfg, "name": "Phi-4-untied"}
    hf = _to_hf(untied, model.state_dict())
    hf_cfg = family_for_lit(untied).hf_config(untied)
    assert "lm_head.weight" in hf and hf_cfg["tie_word_embeddings"] is False
    x = ids()
    with torch.no_grad():
        assert_close(load_hf(save_hf(hf, hf_cfg, tmp_path / "hf"))(x).logits, model(x))
    # the reverse: a tied config.json whose file still carries a different head
    fam = family_for_lit(cfg)
    hf = _to_hf(*_lit("phi-4-mini"))
    hf["lm_head.weight"] = hf["model.embed_tokens.weight"] * 2
    hf_cfg = fam.hf_config(cfg)
    steps = fam.to_lit_steps(fam.lit_config(hf_cfg), hf_cfg, infos(hf), "in", "out")
    with pytest.raises(Refused, match="lm_head.weight differs"):
        run(steps, hf, "out")


def test_mixed_dtypes_in_one_fused_tensor_are_refused():
    cfg, sd = _lit("phi-2-gqa")
    fam = family_for_lit(cfg)
    hf = _to_hf(cfg, sd)
    hf["model.layers.1.self_attn.v_proj.weight"] = hf["model.layers.1.self_attn.v_proj.weight"].half()
    hf_cfg = fam.hf_config(cfg)
    with pytest.raises(Unsupported, match="different dtypes"):
        fam.to_lit_steps(fam.lit_config(hf_cfg), hf_cfg, infos(hf), "in", "out")


@pytest.mark.parametrize(
    ("case", "change", "error", "match"),
    [
        ("pythia", {"bias": False}, Unsupported, "bias = False"),
        ("pythia", {"n_query_groups": 2}, Unsupported, "no grouped-query attention"),
        ("pythia", {"rope_adjustments": {"factor": 2.0}}, Unsupported, "rope_adjustments"),
        ("phi-3", {"sliding_window_indices": [1, 0]}, Unsupported, "sliding window to every layer"),
        ("falcon-7b", {"name": "falcon-custom"}, Unsupported, "'7b', '40b' or '180B'"),
        ("falcon-7b", {"shared_attention_norm": False}, Unsupported, "shared_attention_norm"),
        ("falcon-40b", {"rotary_percentage": 0.5}, Unsupported, "rotates every head dimension"),
        ("phi-2-gqa", {"future_field": 1}, Unsupported, "unknown LitGPT config field"),
        ("phi-3", {"name": "Phi-3-Gemma-merge"}, Unsupported, "names containing 'Gemma'"),
        ("phi-2-gqa", {"n_embd": "80"}, InvalidFile, "n_embd = '80' is not a positive integer"),
    ],
)
def test_lit_configs_transformers_cannot_reproduce_are_refused(case, change, error, match):
    cfg, _ = _lit(case)
    fam = family_for_lit(cfg)
    with pytest.raises(error, match=match):
        fam.hf_config({**cfg, **change})


def _hf_config(case: str) -> dict[str, Any]:
    _, cls_name, kwargs = next(c for c in HF_CASES if c[0] == case)
    import transformers

    return getattr(transformers, cls_name)(**kwargs).to_dict()


@pytest.mark.parametrize(
    ("case", "change", "match"),
    [
        ("phi-4-mini", {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 6, "long_factor": [1.0] * 6}},
         "rope_scaling type 'longrope'"),
        ("phi-3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "'longrope'"),
        ("pythia", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "'linear'"),
        ("phi-2-gqa", {"qk_layernorm": True}, "qk_layernorm"),
        ("phi-3", {"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ("falcon-40b", {"alibi": True}, "alibi"),
        ("falcon-40b", {"parallel_attn": False}, "parallel_attn"),
        ("pythia", {"hidden_act": "relu"}, "hidden_act 'relu'"),
        ("pythia", {"rotary_pct": 0.5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                           "partial_rotary_factor": 0.25}}, "ambiguous"),
    ],  # fmt: skip
)
def test_hf_configs_litgpt_cannot_reproduce_are_refused(case, change, match):
    hf = {**_hf_config(case), **change}
    with pytest.raises(Unsupported, match=match):
        family_for_hf(hf).lit_config(hf)


def test_transformers_5_neox_config_with_other_rotary_is_refused(tmp_path):
    # transformers 5.3 saves GPT-NeoX's rotary fraction only inside rope_parameters and reloads it as 0.25:
    # the saved model and the reloaded one differ, so no LitGPT model is "the" model
    _, hf, _ = hf_model("GPTNeoXConfig", {**HF_CASES[0][2], "rotary_pct": 0.5}, tmp_path / "hf")
    assert "rotary_pct" not in hf and hf["rope_parameters"]["partial_rotary_factor"] == 0.5
    with pytest.raises(Unsupported, match="ambiguous"):
        family_for_hf(hf).lit_config(hf)


def test_model_config_that_disagrees_with_config_json_is_refused(tmp_path):
    _, hf, tensors = hf_model(*HF_CASES[2][1:], tmp_path / "hf")
    fam = family_for_hf(hf)
    cfg = {**fam.lit_config(hf), "rotary_percentage": 0.5}
    with pytest.raises(Refused, match="rope_n_elem"):
        fam.to_lit_steps(cfg, hf, infos(tensors), "in", "out")


def test_bad_config_json_values_are_invalid_file():
    fam = family_for_hf({"model_type": "falcon"})
    with pytest.raises(InvalidFile, match="hidden_size is missing"):
        fam.lit_config({"model_type": "falcon", "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 8})
    with pytest.raises(InvalidFile, match="num_hidden_layers = True"):
        fam.lit_config({"model_type": "falcon", "hidden_size": 8, "num_attention_heads": 4, "num_hidden_layers": True,
                        "vocab_size": 8})  # fmt: skip
    with pytest.raises(InvalidFile, match="RoPE base twice"):
        fam.lit_config({"model_type": "falcon", "hidden_size": 8, "num_attention_heads": 4, "num_hidden_layers": 2,
                        "vocab_size": 8, "rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}})  # fmt: skip


# --- dispatch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("pythia-1b", "neox"),
        ("stablelm-base-alpha-3b", "neox"),
        ("falcon-180B-chat", "falcon"),
        ("phi-2", "phi"),
        ("Phi-3.5-mini-instruct", "phi"),
        ("Phi-4-reasoning", "phi"),
    ],
)
def test_registry_follows_litgpt_dispatch(name, family):
    from litgpt import Config

    assert family_for_lit(asdict(Config.from_name(name))).name == family


def test_neox_does_not_claim_names_litgpt_sends_elsewhere():
    from ckpt_tool_lit.hub.neox import FAMILY

    for name in ("falcon-x", "Gemma-2-x", "phi-x", "Qwen2.5-x", "QwQ-x", "OLMo-2-x", "Qwen3-x"):
        assert not FAMILY.matches_lit({"name": name, "mlp_class_name": "GptNeoxMLP"}), name
    assert not FAMILY.matches_lit({"name": "x", "mlp_class_name": "LLaMAMLP"})
    with pytest.raises(CkptError):
        family_for_hf({"model_type": "gpt2"})


def test_names_from_config_json_keep_litgpt_on_the_same_path():
    from ckpt_tool_lit.hub.falcon import FAMILY as falcon
    from ckpt_tool_lit.hub.phi import FAMILY as phi

    base = {"model_type": "falcon", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 8}
    assert falcon.lit_config({**base, "_name_or_path": "tiiuae/falcon-7b"})["name"] == "falcon-7b"
    # a 7b-named repository with the 40b layout must not be called "7b": LitGPT would map the wrong norms
    assert falcon.lit_config({**base, "_name_or_path": "me/falcon-7b-x", "new_decoder_architecture": True})[
        "name"
    ] == "falcon-40b-hf"
    p3 = {"model_type": "phi3", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 8,
          "intermediate_size": 8}  # fmt: skip
    assert phi.lit_config({**p3, "tie_word_embeddings": True, "_name_or_path": "me/Phi-3-x"})["name"] == "Phi-4-mini-hf"
    assert phi.lit_config({**p3, "_name_or_path": "microsoft/Phi-3-mini-4k-instruct"})["name"] == (
        "Phi-3-mini-4k-instruct"
    )


# --- the one Family signature ------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["pythia", "phi-2-gqa", "phi-3", "falcon-7b"])
def test_original_config_json_gives_token_ids_tie_and_dtype(case):
    """Every family takes ``tie`` / ``base`` / ``dtype``: token ids come from the original config.json (null,
    not the class defaults, without it), its tie decides the head, the dtype is recorded both ways."""
    cfg, sd = _lit(case)
    fam = family_for_lit(cfg)
    plain = fam.hf_config(cfg)
    assert plain["bos_token_id"] is None and plain["eos_token_id"] is None and plain["pad_token_id"] is None
    base = {"model_type": plain["model_type"], "bos_token_id": 7, "eos_token_id": [8, 9], "tie_word_embeddings": True}
    hf = fam.hf_config(cfg, base=base, dtype="BF16")
    assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (7, [8, 9], None)
    assert hf["torch_dtype"] == hf["dtype"] == "bfloat16" and hf["tie_word_embeddings"] is True
    tied = {**sd, "lm_head.weight": sd["transformer.wte.weight"]}
    steps = fam.to_hf_steps(cfg, infos(tied), "in", "hub", base=base)
    assert "lm_head.weight" not in run(steps, tied, "hub")
    assert fam.hf_config(cfg, tie=False, base=base)["tie_word_embeddings"] is False
    with pytest.raises(Refused, match="another model"):
        fam.hf_config(cfg, base={**base, "hidden_size": 4096})


def test_transformers_config_defaults_are_pinned():
    import transformers as T
    from ckpt_tool_lit.hub import falcon, neox, phi

    classes = {"gpt_neox": T.GPTNeoXConfig, "phi": T.PhiConfig, "phi3": T.Phi3Config, "falcon": T.FalconConfig}
    for module in (neox, phi, falcon):
        for model_type, defaults in module.HF_DEFAULTS.items():
            config = classes[model_type]()
            for key, want in defaults.items():
                if key in ("rope_theta", "rotary_emb_base"):
                    have = config.rope_parameters["rope_theta"]
                elif key in ("partial_rotary_factor", "rotary_pct"):
                    have = config.rope_parameters.get("partial_rotary_factor", 1.0)
                else:
                    have = getattr(config, key)
                assert have == want, (model_type, key)
