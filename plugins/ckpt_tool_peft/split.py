"""Separate a PEFT model saved whole into a Hugging Face base and a PEFT adapter, as PEFT keeps them apart.

``PeftModel.state_dict()`` (what ``torch.save`` / ``save_file`` of a PEFT model
writes) names every tensor ``base_model.model.<module path>…`` and keeps the
adapter name in the keys (PEFT 0.21.2, ``peft/tuners/lora/layer.py``,
``peft/utils/other.py``, ``save_and_load.py``):

* a targeted module's own weights live under ``<mod>.base_layer.<param>``,
  its LoRA matrices under ``<mod>.lora_A.<name>.weight`` / ``lora_B.<name>.weight``
  (``.bias`` with ``lora_bias``), ``lora_embedding_A.<name>`` / ``…B.<name>`` for
  embeddings, ``lora_magnitude_vector.<name>.weight`` for DoRA;
* a ``modules_to_save`` module keeps the untrained copy as
  ``<mod>.original_module.<param>`` and the trained one as ``<mod>.modules_to_save.<name>.<param>``.

The base gets the transformers names (prefix, ``.base_layer`` and
``.original_module`` removed) — what ``save_pretrained`` of the original model
writes — and the adapter the names ``save_pretrained`` of the PEFT model writes
(``get_peft_model_state_dict``: adapter name removed, DoRA's ``.weight`` dropped,
``modules_to_save`` copies under the module's own name, targeted embeddings'
``base_layer`` weights included as ``save_embedding_layers="auto"`` does).
Every tensor is a byte copy.

``adapter_config.json`` is taken from beside the input when there is one
(checked against the shapes); otherwise it is written from the shapes, and
alpha, which the tensors do not hold, must be given with ``--lora-alpha``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ckpt_tool.errors import Refused, Unsupported
from ckpt_tool.io.sidefiles import read_json, travelling_files
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.split import ADAPTER, BASE, IN, SplitOptions, SplitPlan
from ckpt_tool.ops.transform import SideFile, Sink, Step, copy_step
from ckpt_tool_peft.detect import (
    CONFIG_NAME,
    KEY_PREFIX,
    TUNER_PREFIXES,
    parse_config,
    pattern_key,
    pattern_value,
    targets_module,
)

WEIGHTS = "adapter_model.safetensors"
# peft.utils.constants.EMBEDDING_LAYER_NAMES: targeting one of these makes save_pretrained keep the embeddings
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")
_LORA = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_A|lora_B)\.(?P<n>[^.]+)\.(?P<leaf>weight|bias)$")
_EMB = re.compile(r"^(?P<mod>.+)\.lora_embedding_(?P<part>A|B)\.(?P<n>[^.]+)$")
_MAG = re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector\.(?P<n>[^.]+)(?:\.weight)?$")
_MTS = re.compile(r"^(?P<mod>.+?)\.modules_to_save\.(?P<n>[^.]+)\.(?P<rest>.+)$")
_ORIG = re.compile(r"^(?P<mod>.+?)\.original_module\.(?P<rest>.+)$")
_BASE_LAYER = re.compile(r"^(?P<mod>.+?)\.base_layer\.(?P<rest>.+)$")
_OTHER_TUNERS = re.compile(
    r"\.(" + "|".join(re.escape(p) for t, p in TUNER_PREFIXES.items() if p != "lora_") + r")\w*(\.|$)"
    r"|\.(trainable_tokens_\w+|token_adapter)(\.|$)"
)
_CAUSAL = re.compile(r"ForCausalLM$")


def _strip(name: str) -> str:
    return name[len(KEY_PREFIX):]


def claims(source: CheckpointInfo) -> bool:
    """A PEFT model's whole state dict: every key under ``base_model.model.``, LoRA matrices with an adapter name."""
    names = [t.name for t in source.tensors]
    return bool(names) and all(n.startswith(KEY_PREFIX) for n in names) and any(
        _LORA.match(n) or _EMB.match(n) for n in names
    )


class _Module:
    def __init__(self, path: str) -> None:
        self.path = path  # without the prefix
        self.kind = "linear"
        self.parts: dict[str, TensorInfo] = {}  # A, B, B_bias, magnitude


def plan_split(source: CheckpointInfo, options: SplitOptions) -> SplitPlan | None:
    """The split plan of a PEFT model saved whole, or None if the keys are not PEFT's."""
    if source.kind != "model" or not claims(source):
        return None
    assert options.base_out is not None and options.adapter_out is not None
    base_out, adapter_out = Path(options.base_out), Path(options.adapter_out)
    if (base_out / CONFIG_NAME).exists():
        raise Refused(
            f"--base-out {base_out} holds an {CONFIG_NAME}: transformers would load that adapter instead of the base",
            "choose an empty --base-out directory",
        )
    tensors = {t.name: t for t in source.tensors}
    odd = [n for n in tensors if _OTHER_TUNERS.search(n)]
    if odd:
        raise Unsupported(
            f"{source.path}: tensors of a tuner other than LoRA (e.g. {odd[0]!r}); split separates LoRA adapters",
        )
    modules, mts, names = _classify(tensors)
    if len(names) != 1:
        raise Refused(
            f"{source.path}: the model carries {len(names)} adapters ({', '.join(sorted(names))}); split writes one",
            "save the model with only the adapter to split (delete_adapter), or merge the others first",
        )
    (adapter_name,) = names
    _check(source, tensors, modules, mts)

    src_dir = Path((source.details or {}).get("dir") or Path(source.path).parent)
    model_config = _model_config(src_dir)
    config, config_src, alpha_source = _adapter_config(source, src_dir, modules, mts, options, model_config, tensors)
    emb_saved = _saved_embeddings(config, modules)
    bias_mode = config.get("bias", "none")

    base_steps: list[Step] = []
    adapter_steps: list[Step] = []
    for t in source.tensors:
        rel = _strip(t.name)
        if _LORA.match(rel) or _EMB.match(rel) or _MAG.match(rel):
            adapter_steps.append(copy_step(IN, t.name, ADAPTER, _saved_name(t.name, adapter_name), t.dtype, t.shape, "LoRA"))
            continue
        m = _MTS.match(rel)
        if m:
            adapter_steps.append(copy_step(IN, t.name, ADAPTER, f"{KEY_PREFIX}{m['mod']}.{m['rest']}", t.dtype, t.shape,
                                           "modules_to_save copy"))
            continue
        m = _ORIG.match(rel) or _BASE_LAYER.match(rel)
        name = f"{m['mod']}.{m['rest']}" if m else rel
        base_steps.append(copy_step(IN, t.name, BASE, name, t.dtype, t.shape, "base weight"))
        bl = _BASE_LAYER.match(rel)
        also = (bl is not None and bl["mod"] in emb_saved) or (
            rel.endswith(".bias") and (bias_mode == "all" or (bias_mode == "lora_only" and bl is not None and bl["mod"] in modules))
        )
        if also:  # save_pretrained keeps these in the adapter too (under their PEFT names)
            adapter_steps.append(copy_step(IN, t.name, ADAPTER, t.name, t.dtype, t.shape, "saved with the adapter"))

    base_side = [SideFile("config.json", src=src_dir / "config.json")] if model_config is not None else []
    base_side += [SideFile(n, src=p) for n, p in travelling_files(src_dir).items()]
    if config_src is not None and config.get("base_model_name_or_path"):
        adapter_cfg = SideFile(CONFIG_NAME, src=config_src)
    else:
        config["base_model_name_or_path"] = os.path.abspath(base_out)
        adapter_cfg = SideFile(CONFIG_NAME, data=(json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    sinks = {
        BASE: Sink("hf", base_out, {"max_shard_size": options.max_shard_size}, base_side),
        ADAPTER: Sink("peft", adapter_out, {}, [adapter_cfg]),
    }
    ranks = Counter(pattern_value(config.get("rank_pattern") or {}, m, config.get("r", 8)) for m in modules)
    summary: dict[str, Any] = {
        "lora": {
            "r": config.get("r", 8),
            "alpha": config.get("lora_alpha", 8),
            "alpha_source": alpha_source,
            "targets": config.get("target_modules"),
            "modules": len(modules),
            "ranks": sorted(ranks),
            "use_dora": bool(config.get("use_dora")),
            "modules_to_save": config.get("modules_to_save"),
            "adapter_name": adapter_name,
            "source": CONFIG_NAME if config_src is not None else "tensors",
        },
        "assumed": [],
    }
    notes = []
    if model_config is None:
        notes.append("no config.json beside the input: the base directory has none, so from_pretrained cannot load it "
                     "until the model's config.json is added")
    if config_src is None:
        notes.append(f"{CONFIG_NAME} written from the shapes and --lora-alpha, with use_rslora=false (scale alpha/r): "
                     "if the adapter was trained with rsLoRA (alpha/sqrt(r)), set use_rslora there")
    if emb_saved:
        notes.append(f"the targeted embedding weights ({', '.join(sorted(emb_saved))}) are also saved with the adapter, "
                     'as PEFT\'s save_pretrained(save_embedding_layers="auto") does')
    return SplitPlan("peft", base_steps + adapter_steps, sinks, summary, notes, [])


# --- keys ------------------------------------------------------------------------------------------


def _classify(tensors: dict[str, TensorInfo]) -> tuple[dict[str, _Module], dict[str, list[str]], set[str]]:
    """LoRA modules, modules_to_save modules (-> their trained tensors) and the adapter names in the keys."""
    modules: dict[str, _Module] = {}
    mts: dict[str, list[str]] = {}
    names: set[str] = set()
    for full, t in tensors.items():
        rel = _strip(full)
        m = _LORA.match(rel)
        if m:
            mod = modules.setdefault(m["mod"], _Module(m["mod"]))
            mod.parts[m["part"][-1] + ("_bias" if m["leaf"] == "bias" else "")] = t
            names.add(m["n"])
            continue
        m = _EMB.match(rel)
        if m:
            mod = modules.setdefault(m["mod"], _Module(m["mod"]))
            mod.kind = "embedding"
            mod.parts[m["part"]] = t
            names.add(m["n"])
            continue
        m = _MAG.match(rel)
        if m:
            modules.setdefault(m["mod"], _Module(m["mod"])).parts["magnitude"] = t
            names.add(m["n"])
            continue
        m = _MTS.match(rel)
        if m:
            mts.setdefault(m["mod"], []).append(m["rest"])
            names.add(m["n"])
    return modules, mts, names


def _module_of(rel: str) -> str:
    """The model's module a key belongs to (PEFT's wrapper levels removed)."""
    for pattern in (_LORA, _EMB, _MAG, _MTS, _ORIG, _BASE_LAYER):
        m = pattern.match(rel)
        if m:
            return m["mod"]
    return rel.rsplit(".", 1)[0]


def _saved_name(full: str, adapter_name: str) -> str:
    """The key ``save_pretrained`` writes: adapter name removed; DoRA's magnitude loses ``.weight`` too."""
    rel = _strip(full)
    m = _MAG.match(rel)
    if m:
        return f"{KEY_PREFIX}{m['mod']}.lora_magnitude_vector"
    m = _EMB.match(rel)
    if m:
        return f"{KEY_PREFIX}{m['mod']}.lora_embedding_{m['part']}"
    m = _LORA.match(rel)
    assert m is not None
    return f"{KEY_PREFIX}{m['mod']}.{m['part']}.{m['leaf']}"


def _base_weight(tensors: dict[str, TensorInfo], mod: str) -> TensorInfo | None:
    return tensors.get(f"{KEY_PREFIX}{mod}.base_layer.weight")


def _check(source: CheckpointInfo, tensors: dict[str, TensorInfo], modules: dict[str, _Module], mts: dict[str, list[str]]) -> None:
    """Every LoRA module complete and consistent with its base weight; every trained copy has its original."""
    problems: list[str] = []
    for path, mod in modules.items():
        a, b = mod.parts.get("A"), mod.parts.get("B")
        what = "lora_embedding_" if mod.kind == "embedding" else "lora_"
        if a is None or b is None:
            have = [f"{what}{p}" for p in ("A", "B") if p in mod.parts] or ["only a magnitude vector"]
            miss = [f"{what}{p}" for p in ("A", "B") if p not in mod.parts]
            problems.append(f"{path} has {' and '.join(have)} but no {' and '.join(miss)}")
            continue
        if 0 in a.shape or 0 in b.shape:
            problems.append(f"{path}: empty LoRA matrices {list(a.shape)} / {list(b.shape)} (an un-gathered ZeRO-3 save?)")
            continue
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise Unsupported(f"{source.path}: {path} carries LoRA of a {len(a.shape)}-D layer; split handles Linear, "
                              "Conv1D and Embedding LoRA")
        w = _base_weight(tensors, path)
        if w is None:
            problems.append(f"{path} has LoRA tensors but no base weight {path}.base_layer.weight")
            continue
        r = a.shape[0]
        if b.shape[1] != r:
            problems.append(f"{path}: lora_A has rank {r}, lora_B {b.shape[1]}")
            continue
        if mod.kind == "embedding":
            ok = len(w.shape) == 2 and a.shape[1] == w.shape[0] and b.shape[0] == w.shape[1]
        else:
            ok = len(w.shape) == 2 and (
                (a.shape[1], b.shape[0]) == (w.shape[1], w.shape[0]) or (a.shape[1], b.shape[0]) == tuple(w.shape)
            )
        if not ok:
            problems.append(f"{path}: LoRA {list(a.shape)} / {list(b.shape)} does not fit the base weight {list(w.shape)}")
        mag = mod.parts.get("magnitude")
        if mag is not None and (len(mag.shape) != 1 or mag.shape[0] not in w.shape):
            problems.append(f"{path}: DoRA magnitude {list(mag.shape)} does not fit the base weight {list(w.shape)}")
    for path, rests in mts.items():
        missing = [r for r in rests if f"{KEY_PREFIX}{path}.original_module.{r}" not in tensors]
        if missing:
            problems.append(f"{path}: a trained modules_to_save copy of {missing[0]!r} without its original_module")
    if problems:
        raise Refused(
            f"{source.path}: {len(problems)} adapter module(s) are incomplete or inconsistent:\n  - "
            + "\n  - ".join(problems[:20])
            + (f"\n  - … and {len(problems) - 20} more" if len(problems) > 20 else ""),
            "the combined state dict is damaged (an interrupted or partial save); nothing was written",
        )


# --- adapter_config.json ---------------------------------------------------------------------------


def _model_config(src_dir: Path) -> dict[str, Any] | None:
    f = src_dir / "config.json"
    if not f.is_file():
        return None
    data = read_json(f, "the model config")
    return data if isinstance(data, dict) else None


def _adapter_config(
    source: CheckpointInfo, src_dir: Path, modules: dict[str, _Module], mts: dict[str, list[str]],
    options: SplitOptions, model_config: dict[str, Any] | None, tensors: dict[str, TensorInfo],
) -> tuple[dict[str, Any], Path | None, str]:
    """(the adapter config, the file it was read from or None, where alpha came from)."""
    file = src_dir / CONFIG_NAME
    if file.is_file():
        config = parse_config(file)
        _check_recorded(file, config, modules, mts, options)
        return config, file, CONFIG_NAME
    if options.lora_alpha is None:
        raise Refused(
            f"{source.path}: no {CONFIG_NAME} beside the input, and lora_alpha is not stored in the tensors "
            "(the merge scale is alpha / r)",
            "pass --lora-alpha with the value the adapter was trained with, or put its adapter_config.json beside the input",
        )
    return _generated(modules, mts, options.lora_alpha, model_config, tensors), None, "--lora-alpha"


def _check_recorded(file: Path, config: dict[str, Any], modules: dict[str, _Module], mts: dict[str, list[str]],
                    options: SplitOptions) -> None:
    problems: list[str] = []
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise Unsupported(f"{file}: peft_type {config.get('peft_type')!r}; split separates LoRA adapters")
    alpha = config.get("lora_alpha", 8)
    if options.lora_alpha is not None and options.lora_alpha != alpha:
        problems.append(f"lora_alpha = {alpha}, but --lora-alpha {options.lora_alpha} was given")
    rank_pattern = config.get("rank_pattern") or {}
    targets = config.get("target_modules")
    for path, mod in modules.items():
        r = pattern_value(rank_pattern, path, config.get("r", 8))
        if mod.parts["A"].shape[0] != r:
            key = pattern_key(rank_pattern, path)
            problems.append(f"{path}: LoRA rank {mod.parts['A'].shape[0]}, but {'r' if key is None else f'rank_pattern[{key!r}]'} = {r}")
        if targets is not None and not targets_module(targets, path):
            problems.append(f"{path} carries LoRA tensors but target_modules does not select it")
    has_mag = any("magnitude" in m.parts for m in modules.values())
    if has_mag != bool(config.get("use_dora", False)):
        problems.append(f"use_dora = {str(bool(config.get('use_dora'))).lower()}, but the model "
                        f"{'holds' if has_mag else 'holds no'} DoRA magnitude vectors")
    saved = config.get("modules_to_save") or []
    for path in mts:
        if not any(path == s or path.endswith("." + s) for s in saved):
            problems.append(f"{path} has a trained modules_to_save copy, but modules_to_save does not name it")
    if problems:
        raise Refused(
            f"{file} does not describe the adapter tensors of the model beside it:\n  - " + "\n  - ".join(problems[:20]),
            f"fix {file.name}, or move it away so the settings are taken from the tensors (then pass --lora-alpha)",
        )


def _generated(modules: dict[str, _Module], mts: dict[str, list[str]], alpha: Any,
               model_config: dict[str, Any] | None, tensors: dict[str, TensorInfo]) -> dict[str, Any]:
    """A LoraConfig's fields from the shapes: the most common rank as r, the others in rank_pattern."""
    ranks = {p: m.parts["A"].shape[0] for p, m in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    all_modules = {_module_of(_strip(n)) for n in tensors}
    targets: list[str] = []
    for leaf in sorted({p.rsplit(".", 1)[-1] for p in modules}):
        hits = {m for m in all_modules if m == leaf or m.endswith("." + leaf)}
        mine = {p for p in modules if p == leaf or p.endswith("." + leaf)}
        targets += [leaf] if hits == mine else sorted(mine)  # a leaf name only when it selects exactly these
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "rank_pattern": {p: v for p, v in ranks.items() if v != r},
        "alpha_pattern": {},
        "modules_to_save": sorted({p.rsplit(".", 1)[-1] for p in mts}) or None,
        "use_dora": any("magnitude" in m.parts for m in modules.values()),
        "use_rslora": False,
        "lora_bias": any("B_bias" in m.parts for m in modules.values()),
        "bias": "none",
        "fan_in_fan_out": _conv1d(modules, tensors),
        "init_lora_weights": True,
        "lora_dropout": 0.0,
        "inference_mode": True,
        "task_type": None,
        "base_model_name_or_path": None,
    }
    archs = (model_config or {}).get("architectures")
    if isinstance(archs, list) and any(isinstance(a, str) and _CAUSAL.search(a) for a in archs):
        config["task_type"] = "CAUSAL_LM"
    return config


def _conv1d(modules: dict[str, _Module], tensors: dict[str, TensorInfo]) -> bool:
    """transformers' Conv1D stores (in, out): seen on a non-square LoRA'd weight (PEFT forces the flag per layer anyway)."""
    for path, m in modules.items():
        w = _base_weight(tensors, path)
        if m.kind == "linear" and w is not None and w.shape[0] != w.shape[1] and w.shape[0] == m.parts["A"].shape[1]:
            return True
    return False


def _saved_embeddings(config: dict[str, Any], modules: dict[str, _Module]) -> set[str]:
    """The targeted embedding layers whose ``base_layer`` weights ``save_embedding_layers="auto"`` saves.

    PEFT checks ``target_modules`` for ``embed_tokens`` / ``lm_head`` (or a regex
    matching a module ending so) and then saves the model's input and output
    embeddings if LoRA wraps them: here the Embedding LoRA modules and a LoRA'd
    ``lm_head``.
    """
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targeted = any(
            re.fullmatch(targets, p) and re.match(rf"(.*\.)?({'|'.join(EMBEDDING_LAYER_NAMES)})$", p) for p in modules
        )
    elif isinstance(targets, list):
        targeted = any(e in targets for e in EMBEDDING_LAYER_NAMES)
    else:
        targeted = False
    if not targeted or config.get("trainable_token_indices") is not None:
        return set()
    return {p for p, m in modules.items() if m.kind == "embedding" or p.rsplit(".", 1)[-1] == "lm_head"}
