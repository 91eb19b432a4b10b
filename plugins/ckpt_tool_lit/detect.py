"""Recognise LitGPT checkpoints (today's layouts and every legacy one) from names and headers.

The same LitGPT file name has meant different things over time
(``final/lit_model.pth`` was LoRA-only for a week in March 2024), and the
LoRA rank, alpha and targets live only in ``hyperparameters.yaml``, which
records the command line rather than what was trained. So detection trusts
keys and shapes for *what* a file is, reads the side files for *how* it was
trained, cross-checks the two and says so when they disagree or when a legacy
layout needs upgrading (formats.md §2).

Never reads tensor bytes and never imports torch: the CLI must stay instant.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, InvalidFile, NotFound
from ckpt_tool.io import sniff as _sniff
from ckpt_tool.io.sidefiles import read_text
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.merge_plan import scale_problem
from ckpt_tool_lit import config as _config
from ckpt_tool_lit.geometry import Geometry
from ckpt_tool_lit.keys import (
    ADAPTER,
    ADAPTER_NAMES,
    ADAPTER_V2,
    FULL,
    LORA,
    LORA_FLAGS,
    MODULE_FLAGS,
    QKV_PARTS,
    UNKNOWN,
    WEIGHTS_NAME,
    classify,
    layer_of,
    lora_part,
    module_kind,
)

FORMAT = "lit"
BASE_NAME = WEIGHTS_NAME[FULL]
SUFFIX_CLASS = {name: cls for cls, name in WEIGHTS_NAME.items() if cls != FULL}
MARKER_FILES = (_config.MODEL_CONFIG, _config.LEGACY_CONFIG, _config.HYPERPARAMETERS, "prompt_style.yaml")
HF_WEIGHT_SUFFIXES = (".safetensors", ".bin")
OLD_DEFAULT_ALPHA = 16

# Legacy final files of lit-gpt's ``out_dir`` (formats.md §2.2), with the era they belong to.
LEGACY_FINAL: dict[str, str] = {
    "lit_model_lora_finetuned.pth": "lit-gpt LoRA output, May 2023 – Mar 2024",
    "lit_model_adapter_finetuned.pth": "lit-gpt adapter output (one name for v1 and v2), May 2023 – Mar 2024",
    "lit_model_finetuned.pth": "lit-gpt full fine-tune output, Jun 2023 – Mar 2024",
}
# Legacy intermediate files: (pattern, era).
LEGACY_INTERMEDIATE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^iter-(\d+)-ckpt\.pth$"), "lit-gpt intermediate checkpoint, Jun 2023 – Mar 2024"),
    (re.compile(r"^iter-(\d+)\.pth$"), "lit-gpt intermediate checkpoint, May – Jun 2023"),
    (re.compile(r"^step-(\d+)\.pth$"), "lit-gpt intermediate full fine-tune state, Jan – Mar 2024"),
)
ITER_DIR = re.compile(r"^iter-(\d+)$")

_LEGACY_ATTN = re.compile(r"\.attn\.attn\.")
# Keys only LitGPT's GPT has (HF GPT-2 also starts with ``transformer.``, so that is not enough).
_DISTINCTIVE = re.compile(r"^transformer\.h\.\d+\.(norm_1|attn\.qkv|attn\.attn)\.")
_CLASS_TEXT = {LORA: "LoRA adapter", ADAPTER: "adapter v1", ADAPTER_V2: "adapter v2", FULL: "model"}
#: The machine-readable record of values ``ckpt-tool migrate`` assumed in a hyperparameters.yaml it wrote.
#: A YAML comment, because ``litgpt finetune_lora --config hyperparameters.yaml`` (jsonargparse) rejects
#: unknown keys; ``merge_lora`` reads only ``lora_*``, ``checkpoint_dir`` and ``precision``. A key
#: ``ckpt_tool_assumed: [lora_alpha, ...]`` is honoured too.
ASSUMED_MARK = "ckpt-tool-assumed:"
_ASSUMED_LINE = re.compile(r"^#\s*" + re.escape(ASSUMED_MARK) + r"(?P<names>[^\n]*)$", re.MULTILINE)
_ASSUMABLE = ("r", "alpha", *LORA_FLAGS)


@dataclass
class _Side:
    """The side files of the folder holding a weights file."""

    dir: Path
    hyperparameters: dict[str, Any] | None
    model_config: dict[str, Any] | None
    config_name: str | None


def _read_side(directory: Path) -> _Side:
    hp = _config.read_hyperparameters(directory)
    cfg, cfg_name = _config.read_model_config(directory)
    return _Side(directory, hp, cfg, cfg_name)


# ---------------------------------------------------------------------------
# entry point


def detect(path: Path, probe: Any) -> CheckpointInfo | None:
    """Describe the LitGPT checkpoint at ``path`` (a folder or a weights file), or None if it is not one.

    Raises:
        InvalidFile: a LitGPT weights or side file is malformed or hostile.
        NotFound: a LitGPT folder that holds no weights (with a hint where they are).
    """
    path = Path(path)
    if path.is_dir():
        return _detect_dir(path, probe)
    if path.is_file():
        return _detect_file(path, probe)
    return None


def _known_name(file: Path) -> bool:
    name = file.name
    return (
        name == BASE_NAME
        or name in ADAPTER_NAMES
        or name in LEGACY_FINAL
        or any(p.match(name) for p, _ in LEGACY_INTERMEDIATE)
    )


def _detect_file(file: Path, probe: Any) -> CheckpointInfo | None:
    if probe.kind(file) == _sniff.SAFETENSORS:
        return None  # LitGPT never writes safetensors: leave it to the generic handler
    if _known_name(file):
        return _describe(file, probe, lambda: _read_side(file.parent), as_dir=False)
    # Any other name: claim it only when the content is unmistakably LitGPT, and let the
    # generic handler report files it cannot read.
    if probe.kind(file) != _sniff.TORCH_ZIP:
        return None
    try:
        probe.container(file)
    except CkptError:
        return None
    return _describe(file, probe, lambda: _read_side(file.parent), as_dir=False)


def _intermediate_number(name: str) -> int | None:
    for pattern, _era in LEGACY_INTERMEDIATE:
        m = pattern.match(name)
        if m:
            return int(m.group(1))
    return None


def _files(d: Path) -> list[Path]:
    try:
        return sorted(f for f in d.iterdir() if f.is_file())
    except OSError as exc:
        raise InvalidFile(f"{d}: cannot list the folder ({exc.strerror or exc})", "check its permissions") from None


def _detect_dir(d: Path, probe: Any) -> CheckpointInfo | None:
    side_cache: list[_Side] = []

    def side() -> _Side:
        if not side_cache:
            side_cache.append(_read_side(d))
        return side_cache[0]

    adapters = [d / n for n in ADAPTER_NAMES if (d / n).is_file()]
    legacy_finals = [d / n for n in LEGACY_FINAL if (d / n).is_file()]
    intermediates = sorted(
        (f for f in _files(d) if _intermediate_number(f.name) is not None),
        key=lambda f: (_intermediate_number(f.name), f.name),
    )
    base = d / BASE_NAME
    if base.is_file():
        main, others = base, adapters
    elif adapters:
        main, others = adapters[0], adapters[1:]
    elif legacy_finals:
        main, others = legacy_finals[0], legacy_finals[1:]
    elif intermediates:
        main, others = intermediates[-1], []
    else:
        return _no_weights(d)

    info = _describe(main, probe, side, as_dir=True)
    if info is None:
        return None
    info.path = str(d)
    for other in others:
        comp = _describe(other, probe, side, as_dir=True)
        if comp is not None:
            info.companions.append(comp)
    if main == base and info.kind == "model" and any(c.adapter_type == LORA for c in info.companions):
        _check_merged(info)
    elif info.companions and info.kind == "adapter":
        names = ", ".join(Path(c.files[0]).name for c in info.companions)
        info.warnings.append(
            f"{d.name}/ holds several adapter files ({Path(main).name}, {names}); each is reported — "
            "LitGPT loads only the one matching the command you run"
        )
    if intermediates and main not in intermediates:
        info.metadata["intermediate_checkpoints"] = len(intermediates)
    elif len(intermediates) > 1:
        info.metadata["intermediate_checkpoints"] = len(intermediates)
        info.warnings.append(
            f"{d.name}/ holds {len(intermediates)} legacy intermediate checkpoints and no final one; "
            f"showing the latest, {main.name}"
        )
    return info


def _no_weights(d: Path) -> CheckpointInfo | None:
    """A folder without LitGPT weights: step aside, or say where the weights are."""
    if any((d / n).is_file() for n in MARKER_FILES):
        if any(f.name.endswith(HF_WEIGHT_SUFFIXES) for f in _files(d)):
            return None  # e.g. a downloaded HF model not converted yet: the HF handler describes it
        raise NotFound(
            f"{d}: a LitGPT checkpoint folder without weights (no {BASE_NAME} or {BASE_NAME}.lora/.adapter/.adapter_v2)",
            "the weights file is missing; restore it or convert the model with 'litgpt convert_to_litgpt'",
        )
    subdirs = [s for s in ("final",) if (d / s / BASE_NAME).is_file() or any((d / s / n).is_file() for n in ADAPTER_NAMES)]
    steps = sorted(p.name for p in d.glob("step-*") if p.is_dir())
    if subdirs:
        raise NotFound(
            f"{d}: a LitGPT run directory; its checkpoints are in final/"
            + (f" and {len(steps)} step-*/ folders" if steps else ""),
            f"inspect one of them, e.g. 'ckpt-tool inspect {d / 'final'}'",
        )
    return None


# ---------------------------------------------------------------------------
# one weights file


def _is_lit(cls: str, keys: list[str]) -> bool:
    if cls == UNKNOWN:
        return False
    if cls == FULL:
        return any(_DISTINCTIVE.match(k) for k in keys)
    return True


def _describe(file: Path, probe: Any, side_loader: Callable[[], _Side], *, as_dir: bool) -> CheckpointInfo | None:
    if probe.kind(file) == _sniff.SAFETENSORS:
        return None
    container = probe.container(file)
    if container.kind != "torch":
        return None
    keys = list(container.tensors)
    cls = classify(keys)
    if not _is_lit(cls, keys):
        return None
    side = side_loader()
    hp, cfg = side.hyperparameters, side.model_config
    warnings: list[str] = []
    metadata: dict[str, Any] = {}
    where = f"{file.parent.name}/" if as_dir else f"{file.parent.name}/{file.name}"

    if hp:
        for key in ("checkpoint_dir", "precision"):
            value = hp.get(key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                metadata[key] = value
    if cfg and isinstance(cfg.get("name"), str):
        metadata["model"] = cfg["name"]
    if side.config_name == _config.LEGACY_CONFIG:
        warnings.append(
            f"legacy config file {_config.LEGACY_CONFIG} (LitGPT before 2024-03-12); today it is "
            f"{_config.MODEL_CONFIG} — run 'ckpt-tool migrate' to upgrade"
        )
    warnings += _name_warnings(file, cls, metadata)

    tz = container.torch
    state_keys = list(tz.extras) if tz else []
    if tz and isinstance(tz.obj, dict):
        for key in ("iter_num", "step_count", "epoch"):
            value = tz.obj.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                metadata[key] = value
    training_state = container.training_state

    lora = None
    details: dict[str, Any] = {
        "hyperparameters": hp,
        "model_config": cfg,
        "weights": str(file.absolute()),
        "dir": str(side.dir.absolute()),
        "class": cls,
    }
    tensors = container.tensors
    if any(_LEGACY_ATTN.search(k) for k in keys):
        metadata["attention_layout"] = "legacy fused attn.attn (LitGPT < 0.5.5)"
        warnings.append(
            "legacy layout: fused attention 'attn.attn' with rows interleaved per query group "
            "(LitGPT before 0.5.5, Dec 2024); today's LitGPT expects 'attn.qkv' grouped [Q|K|V]"
            + (
                " — 'ckpt-tool migrate --upgrade-attn' writes a converted copy of full and adapter-v2 weights "
                "when it moves them from a legacy name (the original is kept)"
                if cls != LORA and not training_state
                else ""
            )
        )
    if cls == LORA:
        assumed = assumed_values(side.dir, hp) if hp is not None else []
        lora, lora_warnings, lora_details = _lora_summary(tensors, hp, cfg, assumed)
        warnings += lora_warnings
        details.update(lora_details)
        if any(_LEGACY_ATTN.search(k) for k in keys):
            warnings.append(
                "legacy LoRA on 'attn.attn': where its delta lands depends on the LitGPT era that wrote it "
                "(contiguous q/k/v ranges before 2024-02-05, per-head rows until 2024-12-26); the tensors "
                "do not say which, so converting or merging needs the era named explicitly"
            )
        description = f"LitGPT LoRA adapter ({where})"
    elif cls in (ADAPTER, ADAPTER_V2):
        metadata.update(_adapter_facts(tensors, cls))
        description = f"LitGPT {_CLASS_TEXT[cls]} ({where})"
    else:
        description = _model_description(file, keys, container.wrapper, training_state, metadata, where, warnings)
    if training_state:
        metadata["state_keys"] = state_keys
    return CheckpointInfo(
        path=str(file),
        format=FORMAT,
        kind="model" if cls == FULL else "adapter",
        adapter_type=None if cls == FULL else cls,
        container="torch",
        files=[str(file.absolute())],
        tensors=list(tensors.values()),
        lora=lora,
        warnings=warnings,
        metadata=metadata,
        training_state=training_state,
        wrapper=container.wrapper,
        description=description,
        details=details,
    )


def _model_description(
    file: Path,
    keys: list[str],
    wrapper: str | None,
    training_state: bool,
    metadata: dict[str, Any],
    where: str,
    warnings: list[str],
) -> str:
    if any(lora_part(k) for k in keys):
        warnings.append(
            "the file holds LoRA tensors next to the base weights (an unmerged LoRA training state); "
            "LitGPT's loaders expect them split into lit_model.pth.lora"
        )
    if training_state:
        step = metadata.get("step_count", metadata.get("iter_num"))
        at = f" at step {metadata['step_count']}" if "step_count" in metadata else (
            f" at iteration {step}" if step is not None else ""
        )
        return f"LitGPT training state: model weights + optimizer state{at} ({where})"
    if wrapper == "model":
        return f"LitGPT full fine-tune ({where})"
    return f"LitGPT model ({where})"


def _name_warnings(file: Path, cls: str, metadata: dict[str, Any]) -> list[str]:
    """Warnings for legacy names and for names that do not match the content."""
    name = file.name
    modern = WEIGHTS_NAME[cls]
    migrate = "run 'ckpt-tool migrate' on the run directory to upgrade it"
    out: list[str] = []
    if name in LEGACY_FINAL:
        era = LEGACY_FINAL[name]
        metadata["legacy_era"] = era
        metadata["modern_name"] = f"final/{modern}"
        out.append(f"legacy LitGPT file name '{name}' ({era}); today's runs write final/{modern} — {migrate}")
        expected = {"lit_model_lora_finetuned.pth": (LORA,), "lit_model_adapter_finetuned.pth": (ADAPTER, ADAPTER_V2),
                    "lit_model_finetuned.pth": (FULL,)}[name]
        if cls not in expected:
            out.append(f"'{name}' holds a {_CLASS_TEXT[cls]}, not what its name says; the content decides")
        return out
    for pattern, era in LEGACY_INTERMEDIATE:
        m = pattern.match(name)
        if m:
            metadata["legacy_era"] = era
            unit = "optimizer steps" if name.startswith("step-") else "micro-batch iterations"
            metadata["modern_name"] = f"{name.split('.')[0].removesuffix('-ckpt')}/{modern}"
            out.append(
                f"legacy LitGPT intermediate checkpoint '{name}' ({era}; the number counts {unit} and is kept as is); "
                f"today each checkpoint is a folder holding {modern} — {migrate}"
            )
            return out
    if name == BASE_NAME and ITER_DIR.match(file.parent.name):
        era = "LitGPT intermediate folder, 2024-03-04 → 03-08"
        metadata["legacy_era"] = era
        metadata["modern_name"] = f"{file.parent.name}/{modern}"
        out.append(
            f"legacy LitGPT layout '{file.parent.name}/{name}' ({era}; iter counts micro-batch iterations, "
            f"today's step-NNNNNN/ folders count optimizer steps) — {migrate}"
        )
    if name == BASE_NAME and cls != FULL:
        metadata.setdefault("legacy_era", "LitGPT 2024-03-04 → 03-08 saved adapter weights as lit_model.pth")
        metadata["modern_name"] = modern
    if name == BASE_NAME and cls != FULL and ITER_DIR.match(file.parent.name):
        # the folder is legacy too: a file rename alone would strand it (rename --repair refuses it)
        out.append(f"{name} holds only {_CLASS_TEXT[cls]} tensors: it is an adapter, not a model — {migrate}")
    elif name == BASE_NAME and cls != FULL:
        fix = f"ckpt-tool rename {shlex.quote(str(file.parent))} --repair"
        metadata["repair_command"] = fix
        out.append(
            f"{name} holds only {_CLASS_TEXT[cls]} tensors: it is an adapter, not a model (LitGPT saved adapters "
            f"under this name in March 2024; today's LitGPT would try to load it as a full model). "
            f"'{fix}' renames it to {modern} (journaled; --undo reverses it)"
        )
    elif name in SUFFIX_CLASS and SUFFIX_CLASS[name] != cls:
        out.append(f"'{name}' holds a {_CLASS_TEXT[cls]}, not what its name says; the content decides (rename it to {modern})")
    return out


def _adapter_facts(tensors: dict[str, TensorInfo], cls: str) -> dict[str, Any]:
    layers = {x for k in tensors if (x := layer_of(k)) is not None}
    facts: dict[str, Any] = {}
    prompt = [t for k, t in tensors.items() if k.endswith("adapter_wte.weight") and len(t.shape) == 2]
    if prompt:
        facts["adapter_prompt_length"] = prompt[0].shape[0]
        facts["adapter_layers"] = len(prompt)
    elif layers and cls == ADAPTER:
        facts["adapter_layers"] = len(layers)
    return facts


# ---------------------------------------------------------------------------
# LoRA: rank, alpha and targets


def _setting(src: dict[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` present in ``src`` (today's name first, then older ones)."""
    for name in names:
        if name in src:
            return src[name]
    return None


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _recorded(hp: dict[str, Any] | None, cfg: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """LoRA settings as recorded: hyperparameters.yaml (``lora_*``, or the old ``r``/``to_*`` names), else a
    model config saved from ``litgpt.lora.Config`` (which has ``lora_*`` fields)."""
    for src, name in ((hp, _config.HYPERPARAMETERS), (cfg, "model config")):
        if not src:
            continue
        if any(k in src for k in ("lora_r", "lora_alpha", "r", "alpha", "to_query", "lora_query")):
            out: dict[str, Any] = {
                "r": _setting(src, "lora_r", "r"),
                "alpha": _setting(src, "lora_alpha", "alpha"),
                "dropout": _setting(src, "lora_dropout", "dropout"),
            }
            for flag in LORA_FLAGS:
                out[flag] = _setting(src, f"lora_{flag}", f"to_{flag}")
            return out, name
    return {}, None


def assumed_values(directory: Path, hp: dict[str, Any]) -> list[str]:
    """The LoRA settings (``alpha``, ``query``...) a hyperparameters.yaml marks as assumed, in order.

    Read from the ``# ckpt-tool-assumed: lora_alpha lora_query`` comment ``ckpt-tool migrate`` writes
    (or a ``ckpt_tool_assumed`` list); unknown names are ignored.
    """
    names: list[str] = []
    key = hp.get("ckpt_tool_assumed")
    if isinstance(key, list):
        names += [x for x in key[:64] if isinstance(x, str)]
    try:
        text = read_text(directory / _config.HYPERPARAMETERS, "the LoRA hyperparameters")
    except InvalidFile:
        text = ""
    for m in _ASSUMED_LINE.finditer(text):
        names += re.split(r"[\s,]+", m["names"].strip())[:64]
    out: list[str] = []
    for n in names:
        n = n.strip().removeprefix("lora_")
        if n in _ASSUMABLE and n not in out:
            out.append(n)
    return out


def _lora_summary(
    tensors: dict[str, TensorInfo],
    hp: dict[str, Any] | None,
    cfg: dict[str, Any] | None,
    assumed: list[str] | None = None,
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Rank, alpha, dropout and enabled targets of a LitGPT LoRA state dict, checked against its shapes.

    ``lora_A`` is ``(r·k, in)`` for the fused qkv with k enabled parts and
    ``(r, in)`` elsewhere; ``lora_B`` is ``(out_enabled, r)`` (formats.md §2.3).
    """
    warnings: list[str] = []
    modules: dict[str, dict[str, TensorInfo]] = {}
    for name, t in tensors.items():
        if p := lora_part(name):
            modules.setdefault(p[0], {})[p[1]] = t

    ranks: dict[int, int] = {}
    present = dict.fromkeys(MODULE_FLAGS, False)
    qkv_parts: list[tuple[int, int]] = []  # (k enabled parts, rows of B) per qkv module
    broken: list[str] = []
    for mod, parts in modules.items():
        a, b = parts.get("A"), parts.get("B")
        if a is None or b is None:
            broken.append(f"{mod} has lora_{'A' if a is not None else 'B'} but no lora_{'B' if a is not None else 'A'}")
            continue
        if len(a.shape) != 2 or len(b.shape) != 2 or 0 in a.shape or 0 in b.shape:
            broken.append(f"{mod}: lora_A {list(a.shape)} / lora_B {list(b.shape)} are not 2-D matrices "
                          "(an empty or flattened save, e.g. un-gathered ZeRO-3 shards)")
            continue
        r = b.shape[1]
        kind = module_kind(mod)
        if a.shape[0] % r:
            broken.append(f"{mod}: lora_A has {a.shape[0]} rows, not a multiple of the rank {r} from lora_B")
            continue
        k = a.shape[0] // r
        if kind != "qkv" and k != 1:
            broken.append(f"{mod}: lora_A has {a.shape[0]} rows, expected the rank {r}")
            continue
        ranks[r] = ranks.get(r, 0) + 1
        if kind == "qkv":
            if not 1 <= k <= 3:
                broken.append(f"{mod}: lora_A has {a.shape[0]} rows = {k} × rank {r}; the fused qkv has 3 parts at most")
                continue
            qkv_parts.append((k, b.shape[0]))
        elif kind in present:
            present[kind] = True
        else:
            warnings.append(f"LoRA tensors on an unexpected module '{mod}'")
    for problem in broken[:5]:
        warnings.append(f"damaged LoRA tensors: {problem}")
    if len(broken) > 5:
        warnings.append(f"... and {len(broken) - 5} more damaged LoRA modules")

    r_tensors = max(ranks, key=lambda r: ranks[r]) if ranks else None
    if len(ranks) > 1:
        warnings.append(f"LoRA ranks differ between modules ({sorted(ranks)}); LitGPT uses one rank for all")

    # Which of q, k, v the fused qkv tensors cover.
    geometry = Geometry.maybe(cfg)
    sizes = geometry.qkv_sizes if geometry else None
    candidates: list[tuple[bool, bool, bool]] | None = None
    for k, rows in set(qkv_parts):
        combos = [c for c in itertools.product((True, False), repeat=3) if sum(c) == k]
        if sizes:
            combos = [c for c in combos if sum(s for s, on in zip(sizes, c) if on) == rows]
        candidates = combos if candidates is None else [c for c in candidates if c in combos]
    if candidates is None:
        candidates = [(False, False, False)]  # no qkv LoRA tensors at all
    elif not candidates and sizes:
        warnings.append(
            f"the attn.qkv LoRA shapes fit no combination of query/key/value for this model config "
            f"(q, k, v rows = {sizes}); the config may not be the one the adapter was trained on"
        )

    recorded, source = _recorded(hp, cfg)
    r_rec = recorded.get("r")
    alpha = _number(recorded.get("alpha"))
    dropout = _number(recorded.get("dropout"))
    if alpha is None and recorded.get("alpha") is not None:
        warnings.append(
            f"{source}: lora_alpha = {recorded.get('alpha')!r:.40} is not a number (YAML reads 1e999 without a "
            "decimal point as text): the merge scale alpha/r is unknown and LitGPT's own merge would fail"
        )
    if recorded and r_rec is not None and _config.positive_int(r_rec) is None:
        warnings.append(f"{source}: lora_r = {r_rec!r} is not a positive integer; using the rank from the tensors")
    r = _config.positive_int(r_rec)
    details: dict[str, Any] = {"lora_rank_tensors": r_tensors, "qkv_candidates": [list(c) for c in candidates]}
    if alpha is None and recorded.get("alpha") is not None:
        details["alpha_recorded"] = recorded.get("alpha")
    if r is not None and r_tensors is not None and r != r_tensors:
        warnings.append(
            f"rank mismatch: {source} says lora_r = {r} but the LoRA tensors have rank {r_tensors}; "
            "the file does not match its recorded settings (LitGPT would fail to load it)"
        )
        details["rank_mismatch"] = (r, r_tensors)
    if r is None:
        r = r_tensors

    flags: dict[str, bool | None] = {}
    rec_flags = {f: recorded.get(f) for f in LORA_FLAGS}
    have_rec = source is not None and all(isinstance(v, bool) for v in rec_flags.values())
    if source is not None and not have_rec:
        missing = [f for f, v in rec_flags.items() if not isinstance(v, bool)]
        warnings.append(f"{source} does not record lora_{'/'.join(missing)}; inferred from the tensors where possible")
    # q/k/v
    rec_qkv = tuple(rec_flags[f] for f in QKV_PARTS)
    if all(isinstance(v, bool) for v in rec_qkv):
        flags.update(zip(QKV_PARTS, rec_qkv))
        if candidates and rec_qkv not in candidates:
            warnings.append(
                f"{source} enables {_parts(rec_qkv)} on attn.qkv but the LoRA tensors cover "
                + (_parts(candidates[0]) if len(candidates) == 1 else f"{sum(candidates[0])} part(s)")
            )
    elif candidates:
        # A part is known when every combination that fits the shapes agrees on it.
        for i, flag in enumerate(QKV_PARTS):
            values = {c[i] for c in candidates}
            flags[flag] = values.pop() if len(values) == 1 else None
        if len(candidates) > 1:
            what = "k and v have the same size" if sizes else "there is no model config to size q, k and v"
            options = " or ".join(_parts(c) for c in candidates)
            warnings.append(
                f"cannot tell which parts of attn.qkv the LoRA covers: {options} fit the shapes ({what}); "
                "the old lit-gpt default was query+value — record the lora_query/lora_key/lora_value flags in "
                f"{_config.HYPERPARAMETERS} before merging ('ckpt-tool migrate' writes one with the old defaults "
                "and says so)"
            )
    else:
        flags.update(dict.fromkeys(QKV_PARTS))
    for flag in MODULE_FLAGS:
        rec = rec_flags[flag]
        if isinstance(rec, bool):
            flags[flag] = rec
            if rec != present[flag] and ranks:
                warnings.append(
                    f"{source} says lora_{flag} = {str(rec).lower()} but the file "
                    + ("holds no" if rec else "holds") + f" LoRA tensors for {flag}"
                )
        else:
            flags[flag] = present[flag]

    if alpha is None:
        if source is None:
            why = (f"{_config.HYPERPARAMETERS} holds no LoRA settings" if hp is not None
                   else f"no {_config.HYPERPARAMETERS} records it")
            warnings.append(
                f"LoRA alpha is unknown: {why} and the tensors cannot tell. "
                f"The old lit-gpt default was alpha={OLD_DEFAULT_ALPHA} (with r=8); nothing is assumed — "
                f"record lora_alpha in {_config.HYPERPARAMETERS} before merging ('ckpt-tool migrate' writes one "
                "with the old defaults and says so)"
            )
        else:
            warnings.append(f"{source} does not record lora_alpha; the merge scale alpha/r is unknown")
    problem = scale_problem(alpha, r) if alpha is not None and r is not None else None
    if problem:
        warnings.append(
            f"{source}: {problem}: merging would silently turn every adapted weight into NaN, inf or garbage "
            "(ckpt-tool merge refuses it)"
        )
    if geometry is None and cfg and qkv_parts:
        try:
            Geometry.from_config(cfg, f"the model config ({_config.MODEL_CONFIG})")
        except InvalidFile as exc:
            warnings.append(f"{exc.message}: the q/k/v sizes of attn.qkv are unknown (a merge refuses it)")
    assumed = [a for a in (assumed or []) if a in ("alpha", "r", *LORA_FLAGS)]
    if assumed:
        shown = ", ".join(
            f"lora_{a}={alpha if a == 'alpha' else r if a == 'r' else str(flags.get(a)).lower()}" for a in assumed
        )
        warnings.append(
            f"{source} marks values as ASSUMED ({shown}): 'ckpt-tool migrate' wrote them for a run that had no "
            f"{_config.HYPERPARAMETERS} (alpha is not stored in LoRA weights; the old lit-gpt default was "
            f"alpha={OLD_DEFAULT_ALPHA}). A merge uses them; if the run trained with other values the merged weights "
            "are wrong - check the training script, then delete the 'ckpt-tool-assumed' line"
        )
    targets = [f for f in LORA_FLAGS if flags.get(f)]
    if any(flags.get(f) is None for f in QKV_PARTS) and qkv_parts:
        targets.insert(0, "qkv")
    lora: dict[str, Any] = {
        "r": r,
        "alpha": alpha,
        "scales": [alpha / r] if (alpha is not None and r) else [],
        "dropout": dropout,
        "targets": targets,
        **flags,
        "source": source or "tensors",
        "modules": len(modules),
    }
    if assumed:
        lora["assumed"] = assumed
    return lora, warnings, details


def _parts(flags: tuple[Any, ...]) -> str:
    names = [n for n, on in zip(QKV_PARTS, flags) if on]
    return "+".join(names) if names else "none"


def _check_merged(info: CheckpointInfo) -> None:
    """A ``final/`` with both ``lit_model.pth`` and an adapter: LitGPT treats the model as "already
    merged" without looking; look at least that the model is complete and the adapter fits it."""
    info.metadata["merged"] = True
    info.description = (info.description or "").replace(
        "LitGPT model", "LitGPT model merged from the LoRA adapter beside it", 1
    )
    model_keys = {t.name: t for t in info.tensors}
    for comp in info.companions:
        if comp.adapter_type != LORA:
            continue
        missing = []
        for t in comp.tensors:
            p = lora_part(t.name)
            if not p or p[1] != "A":
                continue
            base = model_keys.get(p[0] + ".weight")
            if base is None or len(base.shape) != 2 or base.shape[1] != t.shape[-1]:
                missing.append(p[0])
        if missing:
            info.warnings.append(
                f"{BASE_NAME} does not fit the LoRA adapter beside it ({len(missing)} module(s) missing or of "
                f"another size, e.g. {missing[0]}); it may not be the merge of this adapter"
            )
