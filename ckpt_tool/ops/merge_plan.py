"""The contract between format plugins and the streaming merge engine.

A plugin's ``ckpt_merge_plan`` hook validates an adapter against a base and
returns a ``MergePlan``: for each base tensor, the function that turns it into
the merged tensor. The engine (``ckpt_tool.ops.merge``) owns all I/O: it walks
the base tensors in file order, reads each one from the mmap, calls the change
function, and hands the result to a streaming writer. Plugins own the math,
because bit-exactness with each peer (``litgpt merge_lora``, PEFT
``merge_and_unload``) means repeating that peer's exact sequence of torch ops
and roundings.

Change functions receive torch tensors, so they import torch lazily; building
the plan itself must not need tensor bytes of the base.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, UsageError
from ckpt_tool.io.tensors import DTYPE_ALIASES
from ckpt_tool.limits import MAX_LORA_RANK, MAX_LORA_SCALE

if TYPE_CHECKING:
    import torch

    from ckpt_tool.model import CheckpointInfo, TensorInfo

#: Loads a tensor of the adapter (or any other input) by its name, as a torch tensor (read-only view, original dtype).
AdapterLoader = Callable[[str], "torch.Tensor"]
#: ``change(base_tensor, load) -> merged tensor`` in the base's shape, in whatever dtype the peer's math
#: ends in; the engine casts it to the plan's ``out_dtype`` (a plain ``.to``) when that differs.
#: ``base_tensor`` is a read-only view in the base's dtype; never modify it in place.
Change = Callable[["torch.Tensor", AdapterLoader], "torch.Tensor"]


@dataclass
class MergeOptions:
    """What the user asked for on the command line."""

    dtype: str = "auto"  # "auto", or any spelling of bf16 / fp16 / fp32; stored as "auto" | "BF16" | "F16" | "F32"
    adapter_name: str | None = None  # PEFT multi-adapter dirs
    base: Path | None = None  # --base, if given
    #: ``--lora-alpha`` / ``--lora-targets``: hyperparameters given on the command line for adapters whose
    #: own record of them is lost (LitGPT); they take precedence over the record. A plugin that takes them
    #: lists them in ``summary["hyperparameters"]["given"]``; one that does not must refuse them.
    lora_alpha: int | float | None = None
    lora_targets: tuple[str, ...] | None = None
    # Also set by ``merge``: "out" (Path | None, --out), "force" (bool, --force), "format" (str | None).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # One spelling for every plugin: the safetensors dtype name, or "auto".
        if self.dtype != "auto":
            name = DTYPE_ALIASES.get(str(self.dtype).lower())
            if name is None:
                raise UsageError(f"unknown --dtype {self.dtype!r}", "use auto, bf16, fp16 or fp32")
            self.dtype = name

    @property
    def overrides(self) -> list[str]:
        """The command-line options given for LoRA hyperparameters (for messages)."""
        return [o for o, v in (("--lora-alpha", self.lora_alpha), ("--lora-targets", self.lora_targets)) if v is not None]

    @property
    def out_dtype(self) -> str | None:
        """The requested output dtype (safetensors name), or None for the peer's default."""
        return None if self.dtype == "auto" else self.dtype


@dataclass
class MergePlan:
    """Everything the engine needs to stream a merge.

    Attributes:
        base: the base model as detected (``tensors`` in file order give the walk order).
        adapter: the adapter as detected.
        changes: base tensor name -> change function (see ``Change``).
        out_dtype: base tensor name -> output dtype (safetensors name, e.g. "BF16") for *every*
            written tensor; tensors whose output dtype equals their base dtype and that have no
            change are copied byte for byte.
        drop: base tensor names not written to the output.
        rename: base tensor name -> output name (default: unchanged).
        adapter_tensors: adapter tensors by name, for the loader handed to change functions.
        layout: default output layout, "lit" (``lit_model.pth``) or "hf" (``model.safetensors``).
        copy_files: files (configs, tokenizer) to copy next to the merged weights.
        summary: JSON-able facts for ``merge --json`` (what was merged, counts, scales...).
        default_out: where the merged weights go when the user gives no ``--out``
            (LitGPT: ``final/lit_model.pth`` beside the adapter); ``None`` means ``--out`` is required.
        wrapper: torch-zip output only: ``None`` writes a bare state dict, ``"model"`` writes ``{"model": sd}``.
        warnings: things the user must hear about although the merge goes ahead (printed on stderr and
            listed in the summary), e.g. assumed hyperparameters or a base loaded in another dtype.
        protected_dirs: directories the output must never go into (the adapter's own folders: a merged
            model written there would be loaded together with the adapter, or mistaken for it), except
            the directory of ``default_out`` when the format's own convention puts the merge there.
        identity: the files that make this adapter what it is (weights and the config holding its
            scale). The engine fingerprints them (sampled, a few MB read) to recognise a base that is a
            copy of this adapter's folder, or this adapter's earlier merge (safetensors outputs record
            the fingerprint in their header). Default: the adapter's weight files.
    """

    base: CheckpointInfo
    adapter: CheckpointInfo
    changes: dict[str, Change]
    out_dtype: dict[str, str]
    drop: set[str] = field(default_factory=set)
    rename: dict[str, str] = field(default_factory=dict)
    adapter_tensors: dict[str, TensorInfo] = field(default_factory=dict)
    layout: str = "lit"
    copy_files: list[Path] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    default_out: Path | None = None
    wrapper: str | None = None
    warnings: list[str] = field(default_factory=list)
    protected_dirs: list[Path] = field(default_factory=list)
    identity: list[Path] = field(default_factory=list)


def parse_lora_alpha(text: str | None) -> int | float | None:
    """``--lora-alpha``: a finite positive number up to ``MAX_LORA_SCALE`` (an integer stays an int, as
    YAML would read it); ``UsageError`` (exit 2) otherwise."""
    if text is None:
        return None
    t = str(text).strip()
    try:
        value: int | float = int(t) if t.isdigit() and len(t) <= 18 else float(t)
    except ValueError:
        raise UsageError(f"--lora-alpha {text!r} is not a number", "e.g. --lora-alpha 16") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_LORA_SCALE:
        raise UsageError(
            f"--lora-alpha {text!r}: must be a finite number > 0 and at most {MAX_LORA_SCALE:g}",
            "pass the lora_alpha the adapter was trained with, e.g. --lora-alpha 16",
        )
    return value


def parse_lora_targets(text: str | None) -> tuple[str, ...] | None:
    """``--lora-targets query,value``: comma-separated names (``lora_`` prefix optional), in order, once
    each. Which names exist is the adapter's plugin's knowledge (LitGPT: its lora_* flags)."""
    if text is None:
        return None
    names = [n.strip().lower().removeprefix("lora_") for n in str(text).split(",")]
    if not str(text).strip() or any(not n for n in names):
        raise UsageError(
            f"--lora-targets {text!r}: give a comma-separated list of the LoRA targets",
            "e.g. --lora-targets query,value (LitGPT: query, key, value, projection, mlp, head)",
        )
    return tuple(dict.fromkeys(names))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scale_problem(alpha: Any, r: Any, rslora: bool = False) -> str | None:
    """Why ``alpha`` / ``r`` cannot give a usable LoRA scale, or None when they can.

    A NaN, infinite or absurd alpha (JSON's ``NaN`` / ``Infinity`` / ``1e999``, YAML's ``.nan`` /
    ``.inf``), an absurd rank, or a scale past ``MAX_LORA_SCALE`` would turn every merged weight it
    touches into NaN/inf or garbage without any error from the math.
    """
    if not _is_number(alpha):
        return f"lora_alpha = {alpha!r:.40} is not a number"
    if not math.isfinite(alpha):
        return f"lora_alpha = {alpha!r} is not finite"
    if abs(alpha) > MAX_LORA_SCALE:
        return f"lora_alpha = {alpha!r:.40} is past the limit of {MAX_LORA_SCALE:g}"
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        return f"the rank r = {r!r:.40} is not a positive integer"
    if r > MAX_LORA_RANK:
        return f"the rank r = {r!r:.40} is past the limit of {MAX_LORA_RANK}"
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        return f"the scale {'alpha/sqrt(r)' if rslora else 'alpha/r'} = {scale:g} is past the limit of {MAX_LORA_SCALE:g}"
    return None


def lora_scale(alpha: Any, r: Any, rslora: bool = False, where: str = "the adapter") -> float:
    """The LoRA scale ``alpha/r`` (``alpha/sqrt(r)`` with rsLoRA), computed exactly as the peers do.

    Raises:
        InvalidFile: ``scale_problem`` found something (exit 4, the limits' code); nothing is written.
    """
    problem = scale_problem(alpha, r, rslora)
    if problem is not None:
        raise InvalidFile(
            f"{where}: {problem}: merging would silently turn the adapted weights into NaN, inf or garbage",
            "fix the value in the adapter's config to the one used in training",
        )
    return alpha / math.sqrt(r) if rslora else alpha / r
