"""Separate a LitGPT LoRA model's whole state dict into the base and the adapter LitGPT keeps apart.

A ``litgpt.lora.GPT`` holds each wrapped Linear's pretrained weight as
``<module>.linear.weight`` (and ``.linear.bias``) next to ``<module>.lora_A`` /
``<module>.lora_B``. On disk LitGPT keeps them apart (formats.md §2.1, §2.3):

* the base ``lit_model.pth`` is a bare state dict with the ``.linear`` level
  removed — exactly the mapping of the ``_load_from_state_dict`` hooks of
  ``litgpt/lora.py`` (``qkv.weight`` → ``qkv.linear.weight`` …), read backwards;
* the adapter ``lit_model.pth.lora`` is ``{"model": {every key with "lora_"}}``
  (``lora_filter``), next to ``hyperparameters.yaml`` (``lora_r``, ``lora_alpha``,
  the target flags and ``checkpoint_dir``, the base) and ``model_config.yaml``.

Every tensor is copied byte for byte. r, the targets and the q/k/v parts come
from the shapes (checked against a ``hyperparameters.yaml`` / ``model_config.yaml``
beside the input when there is one); alpha is not in the tensors: it comes from
those files or ``--lora-alpha``, else the old lit-gpt default is *assumed* and
recorded as such, in words and machine-readably (``# ckpt-tool-assumed: …``, the
line ``ckpt-tool migrate`` writes and ``inspect``/``merge`` read back).
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Refused, Unsupported, UsageError
from ckpt_tool.io.sidefiles import read_text, travelling_files
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.split import ADAPTER, BASE, IN, SplitOptions, SplitPlan
from ckpt_tool.ops.transform import SideFile, Sink, copy_step
from ckpt_tool_lit import config as _config
from ckpt_tool_lit.detect import FORMAT, LORA_FLAGS, OLD_DEFAULT_ALPHA, _lora_summary, _recorded
from ckpt_tool_lit.keys import WEIGHTS_NAME, module_kind

BASE_WEIGHTS = WEIGHTS_NAME["full"]
LORA_WEIGHTS = WEIGHTS_NAME["lora"]
#: ``# ckpt-tool-assumed: lora_alpha lora_query …`` — the machine-readable list of assumed settings.
ASSUMED_MARK = "ckpt-tool-assumed:"
_ASSUMED_LINE = re.compile(r"^#\s*" + re.escape(ASSUMED_MARK) + r".*$", re.MULTILINE)
_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<part>[AB])$")
# the ``.linear`` level LoRALinear adds (``map_old_state_dict_weights`` mappings of litgpt/lora.py)
_LINEAR = re.compile(r"^(?P<mod>.+)\.linear\.(?P<leaf>weight|bias)$")
_ADAPTER_V = re.compile(r"(adapter_wte\.weight|gating_factor|adapter_scale|adapter_bias)$")
# side files that travel into both outputs (the tokenizer and HF files of a LitGPT checkpoint dir)
_BOTH = ("config.json",)
_ADAPTER_ONLY = ("prompt_style.yaml",)


def plan_split(source: CheckpointInfo, options: SplitOptions) -> SplitPlan | None:
    """The split plan of a LitGPT model that still carries LoRA tensors, or None if it is not one."""
    if source.format != FORMAT or source.kind != "model":
        return None
    tensors = {t.name: t for t in source.tensors}
    lora_names = [n for n in tensors if "lora_" in n]
    if not lora_names:
        return None
    odd = [n for n in lora_names if not _LORA.match(n)]
    if odd:
        raise Unsupported(
            f"{source.path}: {len(odd)} tensor name(s) contain 'lora_' but are not LitGPT LoRA matrices "
            f"(e.g. {odd[0]!r}); LitGPT's lora_filter would put them in the adapter",
            "split handles LitGPT LoRA models (<module>.lora_A / .lora_B)",
        )
    if any(_ADAPTER_V.search(n) for n in tensors):
        raise Unsupported(
            f"{source.path}: the model also carries adapter (v1/v2) tensors; split separates LoRA tensors only"
        )
    if options.shard_size_given:
        raise UsageError("--max-shard-size does not apply to LitGPT outputs: lit_model.pth is one file")
    assert options.base_out is not None and options.adapter_out is not None
    base_out, adapter_out = Path(options.base_out), Path(options.adapter_out)
    _refuse_misleading(base_out, adapter_out)

    modules = _check_pairs(source, tensors)
    details = source.details or {}
    hp = details.get("hyperparameters")
    cfg = details.get("model_config")
    lora_tensors = {n: tensors[n] for n in lora_names}
    lora, _warnings, lora_details = _lora_summary(lora_tensors, hp, cfg)
    recorded, rec_source = _recorded(hp, cfg)
    ranks = Counter(parts["B"].shape[1] for parts in modules.values())
    if len(ranks) > 1:
        raise Refused(
            f"{source.path}: the LoRA ranks differ between modules ({sorted(ranks)}); LitGPT uses one lora_r for all"
        )
    r = next(iter(ranks))
    problems = _recorded_conflicts(recorded, rec_source, r, modules, lora_details, cfg)
    if problems:
        raise Refused(
            f"{source.path}: the LoRA tensors contradict {rec_source}:\n  - " + "\n  - ".join(problems),
            f"fix {rec_source} beside the input (it records what LitGPT would build), or move it away so the "
            "settings are taken from the tensors",
        )

    assumed: list[str] = []
    why: list[str] = []
    alpha, alpha_source = _alpha(recorded, rec_source, options, assumed, why)
    flags = _flags(recorded, modules, lora_details, cfg, assumed, why)

    steps = []
    for t in source.tensors:
        if t.name in lora_tensors:
            continue
        m = _LINEAR.match(t.name)
        name = f"{m['mod']}.{m['leaf']}" if m else t.name
        steps.append(copy_step(IN, t.name, BASE, name, t.dtype, t.shape, "base weight"))
    steps += [copy_step(IN, n, ADAPTER, n, t.dtype, t.shape, "LoRA") for n, t in lora_tensors.items()]

    src_dir = Path(details.get("dir") or Path(source.path).parent)
    hp_text = _hyperparameters(src_dir, hp, base_out, r, alpha, flags, assumed, why)
    base_side, adapter_side, notes = _side_files(src_dir, cfg)
    adapter_side.append(SideFile(_config.HYPERPARAMETERS, data=hp_text.encode()))
    sinks = {
        BASE: Sink("lit", base_out, {"wrapper": None}, base_side),
        ADAPTER: Sink("lit", adapter_out, {"weights_name": LORA_WEIGHTS, "wrapper": "model"}, adapter_side),
    }
    targets = [f for f in LORA_FLAGS if flags.get(f)]
    summary: dict[str, Any] = {
        "lora": {
            "r": r,
            "alpha": alpha,
            "alpha_source": alpha_source,
            "targets": targets,
            "modules": len(modules),
            "source": rec_source or "tensors",
        },
        "assumed": [f"lora_{a}" for a in assumed],
    }
    warnings = [
        f"ASSUMED {w}; recorded in {adapter_out / _config.HYPERPARAMETERS} (a '# {ASSUMED_MARK}' line) — "
        "correct it there if the adapter was trained otherwise"
        for w in why
    ]
    return SplitPlan("lit", steps, sinks, summary, notes, warnings)


# --- checks ----------------------------------------------------------------------------------------


def _refuse_misleading(base_out: Path, adapter_out: Path) -> None:
    """LitGPT decides what a folder is by file names: never leave a pair that reads as something else."""
    if (adapter_out / BASE_WEIGHTS).exists():
        raise Refused(
            f"--adapter-out {adapter_out} holds a {BASE_WEIGHTS}: LitGPT would take the new adapter as already merged",
            "choose an empty --adapter-out directory",
        )
    stray = [n for n in (LORA_WEIGHTS, WEIGHTS_NAME["adapter"], WEIGHTS_NAME["adapter_v2"]) if (base_out / n).exists()]
    if stray:
        raise Refused(
            f"--base-out {base_out} holds {stray[0]}: the new {BASE_WEIGHTS} would read as that adapter's merge",
            "choose an empty --base-out directory",
        )


def _check_pairs(source: CheckpointInfo, tensors: dict[str, TensorInfo]) -> dict[str, dict[str, TensorInfo]]:
    """Every LoRA module has A and B of consistent 2-D shapes and a base weight they fit; all problems at once."""
    modules: dict[str, dict[str, TensorInfo]] = {}
    for n, t in tensors.items():
        m = _LORA.match(n)
        if m:
            modules.setdefault(m["mod"], {})[m["part"]] = t
    problems: list[str] = []
    for mod, parts in modules.items():
        a, b = parts.get("A"), parts.get("B")
        if a is None or b is None:
            have, miss = ("lora_A", "lora_B") if a is not None else ("lora_B", "lora_A")
            problems.append(f"{mod} has {have} but no {miss}")
            continue
        if len(a.shape) != 2 or len(b.shape) != 2 or 0 in a.shape or 0 in b.shape:
            problems.append(f"{mod}: lora_A {list(a.shape)} / lora_B {list(b.shape)} are not 2-D matrices")
            continue
        r = b.shape[1]
        k, rem = divmod(a.shape[0], r)
        if rem or not (1 <= k <= (3 if module_kind(mod) == "qkv" else 1)):
            problems.append(f"{mod}: lora_A has {a.shape[0]} rows, which does not fit the rank {r} of lora_B")
            continue
        w = tensors.get(f"{mod}.linear.weight") or tensors.get(f"{mod}.weight")
        if w is None:
            problems.append(f"{mod} has LoRA tensors but no base weight {mod}.linear.weight")
        elif len(w.shape) != 2 or w.shape[1] != a.shape[1] or not (
            b.shape[0] <= w.shape[0] if module_kind(mod) == "qkv" else b.shape[0] == w.shape[0]
        ):
            problems.append(f"{mod}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit the weight {list(w.shape)}")
    if problems:
        raise Refused(
            f"{source.path}: {len(problems)} LoRA module(s) are incomplete or inconsistent:\n  - "
            + "\n  - ".join(problems[:20])
            + (f"\n  - … and {len(problems) - 20} more" if len(problems) > 20 else ""),
            "the combined state dict is damaged (an interrupted or partial save); nothing was written",
        )
    return modules


def _present(modules: dict[str, dict[str, TensorInfo]]) -> dict[str, bool]:
    kinds = {module_kind(m) for m in modules}
    return {f: f in kinds for f in ("projection", "mlp", "head")}


def _qkv_parts(modules: dict[str, dict[str, TensorInfo]]) -> int:
    ks = {p["A"].shape[0] // p["B"].shape[1] for m, p in modules.items() if module_kind(m) == "qkv"}
    return max(ks) if ks else 0


def _recorded_conflicts(
    recorded: dict[str, Any], source: str | None, r: int, modules: dict[str, dict[str, TensorInfo]],
    lora_details: dict[str, Any], cfg: dict[str, Any] | None,
) -> list[str]:
    if source is None:
        return []
    out: list[str] = []
    rec_r = recorded.get("r")
    if rec_r is not None and rec_r != r:
        out.append(f"lora_r = {rec_r!r}, but the LoRA tensors have rank {r}")
    present = _present(modules)
    for flag, has in present.items():
        rec = recorded.get(flag)
        if isinstance(rec, bool) and rec != has:
            out.append(f"lora_{flag} = {str(rec).lower()}, but the file {'holds' if has else 'holds no'} {flag} LoRA tensors")
    rec_qkv = tuple(recorded.get(f) for f in ("query", "key", "value"))
    if all(isinstance(v, bool) for v in rec_qkv):
        k = _qkv_parts(modules)
        candidates = [tuple(c) for c in lora_details.get("qkv_candidates") or []]
        if sum(rec_qkv) != k or (k and candidates and rec_qkv not in candidates):
            on = "+".join(n for n, v in zip(("query", "key", "value"), rec_qkv) if v) or "none"
            out.append(f"lora_query/key/value enable {on} on attn.qkv, but the LoRA tensors cover {k} part(s)"
                       + (" of other sizes" if sum(rec_qkv) == k else ""))
    return out


def _alpha(
    recorded: dict[str, Any], source: str | None, options: SplitOptions, assumed: list[str], why: list[str]
) -> tuple[Any, str]:
    rec = recorded.get("alpha")
    given = options.lora_alpha
    if isinstance(rec, (int, float)) and not isinstance(rec, bool):
        if given is not None and given != rec:
            raise Refused(
                f"--lora-alpha {given} contradicts {source} beside the input (lora_alpha = {rec})",
                "drop --lora-alpha, or fix the recorded value",
            )
        return rec, str(source)
    if given is not None:
        return given, "--lora-alpha"
    assumed.append("alpha")
    why.append(f"lora_alpha={OLD_DEFAULT_ALPHA} (the old lit-gpt default; alpha is not stored in the weights)")
    return OLD_DEFAULT_ALPHA, "assumed"


def _flags(
    recorded: dict[str, Any], modules: dict[str, dict[str, TensorInfo]], lora_details: dict[str, Any],
    cfg: dict[str, Any] | None, assumed: list[str], why: list[str],
) -> dict[str, bool]:
    """The six ``lora_*`` target flags: recorded, else from the tensors; q/k/v assumed only when shapes cannot tell."""
    flags: dict[str, bool] = dict(_present(modules))
    rec_qkv = tuple(recorded.get(f) for f in ("query", "key", "value"))
    names = ("query", "key", "value")
    if all(isinstance(v, bool) for v in rec_qkv):
        flags.update(zip(names, rec_qkv))  # type: ignore[arg-type]
        return flags
    k = _qkv_parts(modules)
    if not k:
        flags.update(dict.fromkeys(names, False))
        return flags
    candidates = [tuple(c) for c in lora_details.get("qkv_candidates") or [] if sum(c) == k]
    sizes = _config.qkv_sizes(cfg)
    if not candidates and sizes:
        raise Refused(
            f"the attn.qkv LoRA shapes fit no combination of query/key/value of the model config beside the input "
            f"(q, k, v rows = {list(sizes)})",
            "the model config is not the one the LoRA model was built with; fix or remove it",
        )
    if not candidates:
        candidates = [c for c in itertools.product((True, False), repeat=3) if sum(c) == k]
    if len(candidates) == 1:
        chosen = candidates[0]
    else:
        qv = (True, False, True)
        chosen = qv if qv in candidates else candidates[0]
        sized = "k and v have the same size" if sizes else "there is no model config to size q, k and v"
        assumed.extend(["query", "key", "value"])
        why.append(
            f"LoRA on {'+'.join(n for n, on in zip(names, chosen) if on)} of attn.qkv (the shapes fit "
            f"{len(candidates)} choices: {sized}; query+value was the old default)"
        )
    flags.update(zip(names, chosen))
    return flags


# --- side files ------------------------------------------------------------------------------------


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _hyperparameters(
    src_dir: Path, hp: dict[str, Any] | None, base_out: Path, r: int, alpha: Any, flags: dict[str, bool],
    assumed: list[str], why: list[str],
) -> str:
    """``hyperparameters.yaml`` for the adapter: the recorded one with ``checkpoint_dir`` set to the new base
    (merge_lora needs it), else one written from the shapes; assumed values named, in words and machine-readably."""
    body: dict[str, Any] = dict(hp or {})
    was = body.get("checkpoint_dir")
    body["checkpoint_dir"] = os.path.abspath(base_out)
    body.setdefault("lora_r", r)
    body.setdefault("lora_alpha", alpha)
    for f in LORA_FLAGS:
        if f in assumed or not isinstance(body.get(f"lora_{f}"), bool):
            body[f"lora_{f}"] = flags[f]
    lines = [
        "# Written by ckpt-tool split" + (
            f": {_config.HYPERPARAMETERS} of the input, with checkpoint_dir set to the split-off base."
            if hp else ": the combined checkpoint had no hyperparameters.yaml; lora_r and the targets come from the "
            "tensor shapes."
        ),
        *([f"# checkpoint_dir was {was!r} (the base of the combined model's training run)."] if was else []),
        *[f"# ASSUMED: {w}" for w in why],
    ]
    carried: list[str] = []
    if hp is not None:
        try:
            carried = _ASSUMED_LINE.findall(read_text(src_dir / _config.HYPERPARAMETERS, "the LoRA hyperparameters"))
        except Exception:  # noqa: BLE001 - the file was parsed by detection; a re-read failure loses nothing
            carried = []
    if assumed:
        lines.append("# The next line records the assumed keys for ckpt-tool inspect/merge; delete it once confirmed.")
        lines.append(f"# {ASSUMED_MARK} " + " ".join(f"lora_{a}" for a in assumed))
    lines += [c for c in carried if c not in lines]
    return "\n".join(lines) + "\n" + _yaml(body)


def _side_files(src_dir: Path, cfg: dict[str, Any] | None) -> tuple[list[SideFile], list[SideFile], list[str]]:
    """Configs and tokenizer files for both folders (LitGPT's loaders check for them in each)."""
    notes: list[str] = []
    both = {n: src_dir / n for n in _BOTH if (src_dir / n).is_file()}
    both.update(travelling_files(src_dir))
    base = [SideFile(n, src=p) for n, p in both.items()]
    adapter = [SideFile(n, src=p) for n, p in both.items()]
    adapter += [SideFile(n, src=src_dir / n) for n in _ADAPTER_ONLY if (src_dir / n).is_file()]
    model_config = src_dir / _config.MODEL_CONFIG
    if model_config.is_file() and cfg is not None:
        adapter.append(SideFile(_config.MODEL_CONFIG, src=model_config))
        lora_keys = [k for k in cfg if k.startswith("lora_")]
        if lora_keys:
            # litgpt.Config (the base's loader) rejects the lora_* fields of litgpt.lora.Config
            base.append(SideFile(_config.MODEL_CONFIG, data=_yaml({k: v for k, v in cfg.items() if k not in lora_keys}).encode()))
        else:
            base.append(SideFile(_config.MODEL_CONFIG, src=model_config))
    elif (src_dir / _config.LEGACY_CONFIG).is_file():
        legacy = src_dir / _config.LEGACY_CONFIG
        base.append(SideFile(_config.LEGACY_CONFIG, src=legacy))
        adapter.append(SideFile(_config.LEGACY_CONFIG, src=legacy))
        notes.append(f"the model config is a legacy {_config.LEGACY_CONFIG}; run 'ckpt-tool migrate' on the outputs")
    else:
        notes.append(
            f"no {_config.MODEL_CONFIG} beside the input: the outputs have none, so litgpt cannot load them until "
            "one is added (ckpt-tool merge needs it when attn.qkv carries LoRA)"
        )
    if not any(s.name in ("tokenizer.json", "tokenizer.model") for s in base):
        notes.append("no tokenizer files beside the input: copy them into both outputs before running litgpt")
    return base, adapter, notes
