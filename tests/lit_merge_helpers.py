"""Real tiny LitGPT runs for the merge tests: a base checkpoint dir and a LoRA ``final/`` written the way
LitGPT writes them, and the real ``litgpt merge_lora`` as the reference.

Models are built with ``litgpt.lora.GPT`` from a ``litgpt.lora.Config``; the LoRA A and B matrices are
filled with random non-zero values (LitGPT initialises B to zero, which would make every merge trivial)
and some base weights are set to -0.0 so the +0.0 that LitGPT's ``zero_pad`` adds is visible.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

FLAGS = ("query", "key", "value", "projection", "mlp", "head")
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float64: torch.int64}


def lit_config(lora: bool = True, n_head: int = 4, n_query_groups: int = 2, n_embd: int = 32, n_layer: int = 2,
               mlp: str = "LLaMAMLP", r: int = 2, alpha: int = 4, flags: tuple[str, ...] = (), **kw: Any) -> Any:
    import litgpt
    import litgpt.lora

    args: dict[str, Any] = dict(
        name="tiny", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_query_groups=n_query_groups,
        block_size=16, vocab_size=64, padded_vocab_size=64, padding_multiple=64,
        mlp_class_name=mlp, intermediate_size=48, norm_class_name="RMSNorm" if mlp == "LLaMAMLP" else "LayerNorm",
        bias=mlp != "LLaMAMLP", rotary_percentage=1.0, parallel_residual=mlp != "LLaMAMLP",
    )
    args.update(kw)
    if not lora:
        return litgpt.Config(**args)
    args.update(lora_r=r, lora_alpha=alpha, lora_dropout=0.0, **{f"lora_{f}": f in flags for f in FLAGS})
    return litgpt.lora.Config(**args)


def _save_config(config: Any, d: Path) -> None:
    from litgpt.utils import save_config

    save_config(config, d)


def _tokenizer_files(d: Path) -> None:
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text("{}")


def build_lora_model(config: Any, seed: int = 0) -> Any:
    import litgpt.lora

    torch.manual_seed(seed)
    model = litgpt.lora.GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "lora_" in name else 0.1))
            if "lora_" not in name and p.dim() == 2:
                p[::3, 0] = -0.0  # LitGPT's zero_pad turns these into +0.0 in disabled q/k/v rows
    return model


def make_base(d: Path, config: Any, model: Any, dtype: torch.dtype, wrap: bool = False) -> Path:
    """A base checkpoint dir as ``litgpt download`` leaves it: bare ``lit_model.pth``, model_config.yaml, tokenizer."""
    d.mkdir(parents=True, exist_ok=True)
    sd = {k.replace("linear.", ""): v.detach().to(dtype).clone() for k, v in model.state_dict().items() if "lora_" not in k}
    torch.save({"model": sd} if wrap else sd, d / "lit_model.pth")
    _save_config(lit_config(lora=False, **_base_kwargs(config)), d)
    _tokenizer_files(d)
    return d


def _base_kwargs(config: Any) -> dict[str, Any]:
    return dict(
        n_head=config.n_head, n_query_groups=config.n_query_groups, n_embd=config.n_embd, n_layer=config.n_layer,
        mlp=config.mlp_class_name,
    )


def make_adapter(d: Path, config: Any, model: Any, dtype: torch.dtype, base_dir: Path, step: bool = False) -> Path:
    """A LoRA checkpoint folder as ``litgpt finetune lora`` writes it (``final/`` or ``step-NNNNNN/``)."""
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items() if "lora_" in k}
    torch.save({"model": sd}, d / "lit_model.pth.lora")
    hp = {
        "checkpoint_dir": str(base_dir),
        "out_dir": str(d.parent),
        "precision": "bf16-true" if dtype == torch.bfloat16 else "32-true",
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": 0.0,
        **{f"lora_{f}": getattr(config, f"lora_{f}") for f in FLAGS},
    }
    (d / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    _save_config(config, d)
    _tokenizer_files(d)
    (d / "prompt_style.yaml").write_text("class_path: litgpt.prompts.Alpaca\n")
    return d


def make_run(root: Path, flags: tuple[str, ...], base_dtype: torch.dtype = torch.float32,
             lora_dtype: torch.dtype | None = None, wrap_base: bool = False, seed: int = 0, **cfg: Any) -> tuple[Path, Path]:
    """(base_dir, final_dir) of a tiny LoRA run with the given targets."""
    config = lit_config(flags=flags, **cfg)
    model = build_lora_model(config, seed)
    base = make_base(root / "base", config, model, base_dtype, wrap=wrap_base)
    final = make_adapter(root / "out" / "final", config, model, lora_dtype or base_dtype, base)
    return base, final


def litgpt_merge(final: Path, base: Path, work: Path) -> dict[str, torch.Tensor]:
    """Run the real ``litgpt merge_lora`` on a copy of ``final`` and return the merged state dict."""
    from litgpt.scripts.merge_lora import merge_lora

    ref = work / "ref_final"
    shutil.copytree(final, ref)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        merge_lora(checkpoint_dir=ref, pretrained_checkpoint_dir=base)
    return torch.load(ref / "lit_model.pth", weights_only=True)


def unwrap_copy(base: Path, dest: Path) -> Path:
    """A copy of a ``{"model": ...}``-wrapped base dir with a bare state dict (what LitGPT can read)."""
    shutil.copytree(base, dest)
    sd = torch.load(base / "lit_model.pth", weights_only=True)
    torch.save(sd["model"], dest / "lit_model.pth")
    return dest


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype, (k, g.dtype, w.dtype)
        assert g.shape == w.shape, k
        iv = INT_VIEW.get(w.dtype)
        if iv is None:
            assert torch.equal(g, w), k
        else:
            assert torch.equal(g.contiguous().view(iv), w.contiguous().view(iv)), f"{k}: bits differ"
