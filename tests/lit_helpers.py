"""Builders of REAL LitGPT checkpoints (today's layouts and legacy ones) from tiny configs.

Each builder instantiates the real ``litgpt`` model class, takes its state dict
the way the LitGPT script that writes that file does (``lora_filter``,
``adapter_filter``, ``{"model": ...}`` wrappers, training-state dicts) and
saves it with ``torch.save``. Side files are written by LitGPT's own code
(``save_config``, ``save_hyperparameters``) wherever LitGPT has one.
Shared by the detection, merge and migrate tests: keep the builders general.

LoRA ``lora_B`` is randomised (LitGPT initialises it to zero), so merges built
on these adapters change the weights and can be checked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

# A LLaMA-style model with grouped-query attention (q 32 rows, k = v 16 rows per layer), so
# the fused qkv parts have different sizes and LoRA targets can be told apart by shapes.
TINY: dict[str, Any] = {
    "name": "tiny-llama",
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 32,
    "block_size": 64,
    "vocab_size": 100,
    "padded_vocab_size": 128,
    "n_query_groups": 2,
    "mlp_class_name": "LLaMAMLP",
    "intermediate_size": 64,
    "norm_class_name": "RMSNorm",
    "bias": False,
    "rotary_percentage": 1.0,
    "parallel_residual": False,
}
# Multi-head attention (q = k = v sizes): q/k/v LoRA parts cannot be told apart by shapes.
TINY_MHA: dict[str, Any] = {**TINY, "name": "tiny-mha", "n_query_groups": 4}

LORA_FLAG_NAMES = ("query", "key", "value", "projection", "mlp", "head")


def tiny_config(base: str | dict[str, Any] | Any | None = None, cls: type | None = None, **overrides: Any) -> Any:
    """A ``litgpt.Config`` (or ``cls``, e.g. ``litgpt.lora.Config``) from a registry name, a dict or a Config."""
    import litgpt

    cls = cls or litgpt.Config
    if base is None:
        fields: dict[str, Any] = dict(TINY)
    elif isinstance(base, str):
        fields = asdict(litgpt.Config.from_name(base))
    elif isinstance(base, dict):
        fields = dict(base)
    else:
        fields = asdict(base)
    fields.update(overrides)
    known = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in fields.items() if k in known})


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def base_state_dict(config: Any = None, dtype: torch.dtype | str = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a freshly initialised ``litgpt.GPT`` (what ``lit_model.pth`` holds)."""
    import litgpt

    _seeded(seed)
    model = litgpt.GPT(tiny_config(config))
    return {k: v.detach().to(_dtype(dtype)).clone() for k, v in model.state_dict().items()}


def write_model_config(directory: Path, config: Any = None) -> Path:
    """``model_config.yaml`` as LitGPT writes it (``litgpt.utils.save_config``)."""
    import litgpt
    from litgpt.utils import save_config

    directory.mkdir(parents=True, exist_ok=True)
    save_config(tiny_config(config, cls=litgpt.Config), directory)
    return directory / "model_config.yaml"


def write_tokenizer_files(directory: Path) -> None:
    """Minimal tokenizer side files (LitGPT's ``check_valid_checkpoint_dir`` requires them to exist)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    (directory / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))


def build_base(
    directory: Path,
    config: Any = None,
    dtype: torch.dtype | str = torch.float32,
    *,
    seed: int = 0,
    tokenizer: bool = True,
    model_config: bool = True,
) -> Path:
    """A base checkpoint dir like ``checkpoints/<org>/<name>/``: bare ``lit_model.pth`` + ``model_config.yaml``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(base_state_dict(config, dtype, seed), directory / "lit_model.pth")
    if model_config:
        write_model_config(directory, config)
    if tokenizer:
        write_tokenizer_files(directory)
    return directory


def lora_state_dict(
    config: Any = None,
    *,
    r: int = 4,
    alpha: int = 8,
    query: bool = True,
    key: bool = False,
    value: bool = True,
    projection: bool = False,
    mlp: bool = False,
    head: bool = False,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 1,
) -> dict[str, torch.Tensor]:
    """LoRA-only state dict of a ``litgpt.lora.GPT`` (``lora_filter``), with random lora_B."""
    import litgpt.lora as lit_lora

    cfg = tiny_config(
        config, cls=lit_lora.Config, lora_r=r, lora_alpha=alpha, lora_query=query, lora_key=key,
        lora_value=value, lora_projection=projection, lora_mlp=mlp, lora_head=head,
    )
    _seeded(seed)
    model = lit_lora.GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)
    return {k: v.detach().to(_dtype(dtype)).clone() for k, v in model.state_dict().items() if lit_lora.lora_filter(k, v)}


def write_hyperparameters(directory: Path, method: str, args: Sequence[str]) -> Path:
    """``hyperparameters.yaml`` written by LitGPT's own ``save_hyperparameters`` for ``litgpt finetune_<method>``.

    ``args`` is the command line after the subcommand (``["ckpts/base", "--lora_r", "4"]``).
    """
    import importlib

    from litgpt.parser_config import save_hyperparameters

    setup = importlib.import_module(f"litgpt.finetune.{method}").setup
    directory.mkdir(parents=True, exist_ok=True)
    saved = sys.argv
    sys.argv = ["litgpt", f"finetune_{method}", *map(str, args)]
    try:
        save_hyperparameters(setup, directory)
    finally:
        sys.argv = saved
    return directory / "hyperparameters.yaml"


def lora_args(base_dir: Path | str, r: int, alpha: int, flags: dict[str, bool], precision: str | None) -> list[str]:
    args = [str(base_dir), "--lora_r", str(r), "--lora_alpha", str(alpha)]
    for name in LORA_FLAG_NAMES:
        args += [f"--lora_{name}", str(flags[name]).lower()]
    if precision:
        args += ["--precision", precision]
    return args


def build_lora_final(
    directory: Path,
    base_dir: Path | str = "checkpoints/tiny",
    config: Any = None,
    *,
    r: int = 4,
    alpha: int = 8,
    query: bool = True,
    key: bool = False,
    value: bool = True,
    projection: bool = False,
    mlp: bool = False,
    head: bool = False,
    dtype: torch.dtype | str = torch.float32,
    precision: str | None = "32-true",
    hyperparameters: bool = True,
    model_config: bool = True,
    tokenizer: bool = True,
    seed: int = 1,
    file_name: str = "lit_model.pth.lora",
) -> Path:
    """A ``litgpt finetune_lora`` ``final/`` folder: ``lit_model.pth.lora`` = ``{"model": lora-only}`` plus the
    copied base config/tokenizer files and ``hyperparameters.yaml`` (the recorded command line)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flags = {"query": query, "key": key, "value": value, "projection": projection, "mlp": mlp, "head": head}
    sd = lora_state_dict(config, r=r, alpha=alpha, dtype=dtype, seed=seed, **flags)
    torch.save({"model": sd}, directory / file_name)
    if model_config:
        write_model_config(directory, config)
    if tokenizer:
        write_tokenizer_files(directory)
    if hyperparameters:
        write_hyperparameters(directory, "lora", lora_args(base_dir, r, alpha, flags, precision))
    return directory


def merge_with_litgpt(final_dir: Path, base_dir: Path | None = None, precision: str | None = None) -> Path:
    """Run LitGPT's own ``merge_lora`` (writes ``final/lit_model.pth`` beside the ``.lora`` file)."""
    from litgpt.scripts.merge_lora import merge_lora

    merge_lora(Path(final_dir), Path(base_dir) if base_dir is not None else None, precision)
    return Path(final_dir) / "lit_model.pth"


def adapter_state_dict(
    config: Any = None,
    version: int = 1,
    *,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 2,
    adapter_start_layer: int = 0,
    adapter_prompt_length: int = 5,
) -> dict[str, torch.Tensor]:
    """Adapter-only state dict of ``litgpt.adapter.GPT`` (v1) or ``litgpt.adapter_v2.GPT`` (v2), via their filters."""
    import litgpt.adapter as v1
    import litgpt.adapter_v2 as v2

    mod = v1 if version == 1 else v2
    cfg = tiny_config(config, cls=mod.Config, adapter_start_layer=adapter_start_layer,
                      adapter_prompt_length=adapter_prompt_length)
    _seeded(seed)
    model = mod.GPT(cfg)
    return {k: v.detach().to(_dtype(dtype)).clone() for k, v in model.state_dict().items() if mod.adapter_filter(k, v)}


def build_adapter_final(
    directory: Path,
    version: int = 1,
    base_dir: Path | str = "checkpoints/tiny",
    config: Any = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    hyperparameters: bool = True,
    file_name: str | None = None,
) -> Path:
    """A ``litgpt finetune_adapter`` / ``finetune_adapter_v2`` ``final/`` folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = file_name or ("lit_model.pth.adapter" if version == 1 else "lit_model.pth.adapter_v2")
    torch.save({"model": adapter_state_dict(config, version, dtype=dtype)}, directory / name)
    write_model_config(directory, config)
    write_tokenizer_files(directory)
    if hyperparameters:
        method = "adapter" if version == 1 else "adapter_v2"
        write_hyperparameters(directory, method, [str(base_dir), "--precision", "32-true"])
    return directory


def training_state(config: Any = None, *, iter_num: int = 40, step_count: int = 10, seed: int = 3) -> dict[str, Any]:
    """The ``state`` dict ``litgpt finetune_full`` saves in ``step-*/lit_model.pth`` (model, optimizer,
    scheduler, iter_num, step_count), with a real AdamW that has taken one step."""
    import litgpt

    _seeded(seed)
    model = litgpt.GPT(tiny_config(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss = model(torch.randint(0, 100, (1, 8))).float().mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iter_num": iter_num,
        "step_count": step_count,
    }


def build_full_final(directory: Path, base_dir: Path | str = "checkpoints/tiny", config: Any = None) -> Path:
    """``litgpt finetune_full`` ``final/``: ``lit_model.pth`` = ``{"model": full}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": base_state_dict(config, seed=4)}, directory / "lit_model.pth")
    write_model_config(directory, config)
    write_tokenizer_files(directory)
    write_hyperparameters(directory, "full", [str(base_dir), "--precision", "32-true"])
    return directory


def build_full_step(directory: Path, base_dir: Path | str = "checkpoints/tiny", config: Any = None,
                    *, iter_num: int = 40, step_count: int = 10) -> Path:
    """``litgpt finetune_full`` ``step-NNNNNN/``: ``lit_model.pth`` = the full training state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(training_state(config, iter_num=iter_num, step_count=step_count), directory / "lit_model.pth")
    write_model_config(directory, config)
    write_tokenizer_files(directory)
    write_hyperparameters(directory, "full", [str(base_dir), "--precision", "32-true"])
    return directory


def legacy_fused_state_dict(state: dict[str, torch.Tensor], config: Any = None) -> dict[str, torch.Tensor]:
    """A LitGPT < 0.5.5 state dict: ``attn.qkv`` → ``attn.attn`` with rows interleaved per query group,
    converted with LitGPT's own ``convert_lit_checkpoint.qkv_reassemble`` (grouped → interleaved)."""
    from litgpt.scripts.convert_lit_checkpoint import qkv_reassemble

    cfg = tiny_config(config)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if ".attn.qkv." in k and not k.endswith(("lora_A", "lora_B")):
            out[k.replace(".attn.qkv.", ".attn.attn.")] = qkv_reassemble(v, cfg)
        else:
            out[k.replace(".attn.qkv.", ".attn.attn.")] = v
    return out


def write_lit_config_json(directory: Path, config: Any = None) -> Path:
    """Legacy ``lit_config.json`` (before 2024-03-12), with the old key names of that era."""
    fields = asdict(tiny_config(config))
    fields["_norm_class"] = fields.pop("norm_class_name")
    fields["_mlp_class"] = fields.pop("mlp_class_name")
    fields["condense_ratio"] = fields.pop("rope_condense_ratio")
    fields.pop("hf_config", None)
    fields["org"] = "test"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lit_config.json"
    path.write_text(json.dumps(fields, default=str))
    return path
