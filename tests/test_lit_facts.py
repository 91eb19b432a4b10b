"""LitGPT format facts that used to be coded twice (the LoRA converter had its own config reader, tensor
table, limits and key grammar) and disagreed: each test pins the one copy that is left to LitGPT itself,
or to the other user of the fact."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ckpt_tool.errors import InvalidFile
from ckpt_tool.limits import MAX_LAYERS

pytestmark = pytest.mark.interop

#: A tiny LLaMA-shaped LitGPT config.
TINY: dict[str, Any] = {
    "name": "tiny", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_query_groups": 2, "padded_vocab_size": 64,
    "vocab_size": 64, "block_size": 32, "norm_class_name": "RMSNorm", "mlp_class_name": "LLaMAMLP",
    "intermediate_size": 48, "bias": False, "parallel_residual": False, "rotary_percentage": 1.0,
}  # fmt: skip


def _litgpt_table(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    import litgpt

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in litgpt.GPT(litgpt.Config(**cfg)).state_dict().items()}


def _table(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from ckpt_tool_lit.lora_hub import LitModel  # what the LoRA converter plans from

    return LitModel(cfg).base_table()


def test_the_table_takes_the_name_from_hf_config_as_litgpt_does():
    """``Config.__post_init__`` names an unnamed config after ``hf_config.name``, and the name decides OLMo's
    affine-free LayerNorms. The LoRA converter's own reader read ``name`` only and gave OLMo norm tensors."""
    olmo = {**TINY, "name": "", "hf_config": {"org": "allenai", "name": "OLMo-1B-hf"}, "norm_class_name": "LayerNorm"}
    assert _table(olmo) == _litgpt_table(olmo)
    assert not any("norm" in k for k in _table(olmo))


def test_the_table_covers_grouped_routers_shared_experts_and_dense_first_layers():
    """DeepSeek-V3's MoE without its latent attention: ``GroupedTopkRouter`` stores a correction bias, shared
    experts and dense first layers have their own Linears (the old table had no router bias)."""
    moe = {
        **TINY, "n_layer": 3, "mlp_class_name": "LLaMAMoE", "moe_intermediate_size": 16, "n_expert": 4,
        "n_expert_per_token": 2, "n_expert_groups": 2, "n_topk_groups": 1, "n_topk_scores_per_group": 2,
        "n_shared_expert": 2, "first_k_dense_replace": 1,
    }  # fmt: skip
    table = _table(moe)
    assert table == _litgpt_table(moe)
    assert list(table) == list(_litgpt_table(moe))  # LitGPT's order too
    assert table["transformer.h.1.mlp.gate.e_score_correction_bias"] == (4,)


@pytest.mark.parametrize("key", ["first_k_dense_replace", "n_shared_expert", "n_expert_groups"])
def test_malformed_table_settings_are_invalid_files_not_crashes(key):
    """The old reader used these values unchecked: ``first_k_dense_replace: "x"`` was a TypeError (an internal
    error of ``convert --to peft``)."""
    with pytest.raises(InvalidFile, match=key):
        _table({**TINY, "mlp_class_name": "LLaMAMoE", "n_expert": 2, key: "x"})


def test_the_lora_converter_has_the_model_limits():
    """``ckpt_tool.limits.MAX_LAYERS`` bounds every config; the LoRA converter had its own 4096."""
    _table({**TINY, "n_layer": MAX_LAYERS})
    with pytest.raises(InvalidFile, match=f"past the limit of {MAX_LAYERS}"):
        _table({**TINY, "n_layer": MAX_LAYERS + 1})


def test_a_full_tensor_in_a_lora_file_is_not_taken_for_lora_on_its_module(cli, tmp_path):
    """LitGPT's LoRA keys are ``<module>.lora_A`` / ``.lora_B`` (``keys.lora_part``); the converter took any
    ``<module>.<x>`` for LoRA on that module and blamed a flag that is on."""
    from test_lora_convert import ALL, make_run

    run = make_run(tmp_path, "llama-gqa", ALL)
    lora = {**run["lora"], "transformer.h.0.attn.qkv.weight": torch.zeros(128, 64)}
    torch.save({"model": lora}, run["final"] / "lit_model.pth.lora")
    res = cli("convert", run["final"], "--to", "peft", "--out", tmp_path / "peft")
    assert res.code == 6, res.stderr
    assert "1 tensor(s) are not LoRA tensors of this model (e.g. 'transformer.h.0.attn.qkv.weight')" in res.stderr
    assert "flag is off" not in res.stderr


def test_merge_and_convert_agree_on_the_lora_modules_of_every_mlp_class():
    """merge's name test and the converter's module list are one fact (``keys``): the MLP Linears of
    ``litgpt.lora.GPT`` for each MLP class, checked against litgpt."""
    import litgpt.lora
    from ckpt_tool_lit import keys

    for mlp, extra in (("GptNeoxMLP", {}), ("LLaMAMLP", {}), ("GemmaMLP", {}), ("LLaMAMoE", {"n_expert": 2})):
        cfg = litgpt.lora.Config(**{**TINY, "mlp_class_name": mlp, **extra}, lora_r=2, lora_mlp=True)
        with torch.device("meta"):
            model = litgpt.lora.GPT(cfg)
        have = [n for n, m in model.named_modules() if isinstance(m, litgpt.lora.LoRALayer) and m.r > 0]
        mlp_modules = [n for n in have if ".mlp." in n]
        assert mlp_modules == [m for m, k in keys.lora_targets(2, mlp, cfg.n_expert).items() if k == "mlp"], mlp
        assert all(keys.is_lora_mlp(m) for m in mlp_modules)
        assert not keys.is_lora_mlp("transformer.h.0.mlp.shared_experts.fc_1")
