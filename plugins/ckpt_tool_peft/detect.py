"""Recognise Hugging Face PEFT adapter directories and check them strictly.

PEFT itself loads adapters with ``strict=False`` and at most warns about
missing keys, so a damaged adapter (un-gathered ZeRO-3 shards, keys mangled by
the old adapter-name stripping, tensors dropped at save) loads "fine" and
silently does nothing. ``detect`` reads only ``adapter_config.json`` and the
tensor headers and says what is wrong, why it matters and how to fix it.

Facts used here are in formats.md §3. Never imports torch or peft (both cost a
second and the CLI must stay instant); the tuner prefixes are copied from
``peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING`` (0.21.2) and pinned by a test.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, InvalidFile
from ckpt_tool.io.atomic import TEMP_PREFIX
from ckpt_tool.io.regular import open_regular
from ckpt_tool.io.sidefiles import read_json
from ckpt_tool.limits import (
    MAX_LORA_RANK,
    MAX_MODEL_CARD_PROBE_BYTES,
    MAX_MODULE_NAME_CHARS,
    MAX_REGEX_MATCH_SECONDS,
    MAX_REGEX_TOTAL_SECONDS,
)
from ckpt_tool.model import AdapterInfo, CheckpointInfo, TensorInfo
from ckpt_tool.ops.merge_plan import scale_problem

FORMAT = "peft"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_NAME = "default"
KEY_PREFIX = "base_model.model."

# peft_type -> tuner prefix (the substring every adapter parameter name carries).
TUNER_PREFIXES: dict[str, str] = {
    "LORA": "lora_",
    "ADALORA": "lora_",
    "LOHA": "hada_",
    "LOKR": "lokr_",
    "IA3": "ia3_",
    "VERA": "vera_lambda_",
    "PVERA": "pvera_lambda_",
    "OFT": "oft_",
    "BOFT": "boft_",
}
# Tuners whose saved keys are ``lora_A``/``lora_B`` pairs.
LORA_TYPES = ("LORA", "ADALORA")

# AdaLoRA's A/B/E are bare parameters (no ``.weight``)
_LORA_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<part>A|B)(\.(?P<leaf>weight|bias))?$")
_LORA_EMB = re.compile(r"^(?P<mod>.+)\.lora_embedding_(?P<part>A|B)$")
_LORA_MAG = re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector$")
_LORA_E = re.compile(r"^(?P<mod>.+)\.lora_E$")  # AdaLoRA singular values
# PEFT <= 0.17 removed ``.{adapter_name}`` with a plain str.replace, so an adapter
# named ``lora`` lost the ``.lora`` of ``.lora_A`` too.
_DAMAGED = (
    (re.compile(r"^(?P<mod>.+?)_(?P<part>A|B)\.(?P<leaf>weight|bias)$"), r"\g<mod>.lora_\g<part>.\g<leaf>"),
    (re.compile(r"^(?P<mod>.+?)_embedding_(?P<part>A|B)$"), r"\g<mod>.lora_embedding_\g<part>"),
    (re.compile(r"^(?P<mod>.+?)_magnitude_vector$"), r"\g<mod>.lora_magnitude_vector"),
)


def known_prefix(peft_type: str) -> str:
    """The tuner prefix of ``peft_type`` (PEFT uses ``<method>_`` for most tuners)."""
    return TUNER_PREFIXES.get(peft_type, peft_type.lower() + "_")


# ---------------------------------------------------------------------------
# finding adapters


def _weights_file(directory: Path) -> Path | None:
    for name in WEIGHTS_NAMES:  # safetensors preferred, as PEFT does
        if (directory / name).is_file():
            return directory / name
    return None


def _has_model_weights(directory: Path) -> bool:
    """A directory holding its own model files is a model dir, not a folder of adapters."""
    try:
        children = list(directory.iterdir())
    except OSError:
        return False
    for child in children:
        if (
            child.is_file()
            and child.suffix in (".safetensors", ".bin", ".pth", ".pt")
            and child.name not in WEIGHTS_NAMES
        ):
            return True
    return False


def _sub_adapters(root: Path) -> list[Path]:
    """Subfolders holding a named adapter of the same save (one level, as PEFT writes them)."""
    try:
        children = sorted(c for c in root.iterdir() if c.is_dir())
    except OSError:
        return []
    # ckpt-tool's temp folders (an adapter rename in progress) are not adapters of the save
    return [
        c
        for c in children
        if (c / CONFIG_NAME).is_file() and not _is_trainer_checkpoint(c) and not c.name.startswith(TEMP_PREFIX)
    ]


def _is_trainer_checkpoint(directory: Path) -> bool:
    """A ``transformers.Trainer`` ``checkpoint-N/`` is a separate snapshot, not a named adapter."""
    return (directory / "trainer_state.json").is_file()


def trainer_checkpoints(root: Path) -> list[str]:
    """Names of the Trainer snapshot folders under ``root`` that hold an adapter."""
    try:
        return sorted(
            c.name
            for c in root.iterdir()
            if c.is_dir() and (c / CONFIG_NAME).is_file() and _is_trainer_checkpoint(c)
        )
    except OSError:
        return []


def _locate(path: Path) -> tuple[Path, list[tuple[str, Path, Path | None]]] | None:
    """Return (root dir, [(adapter name, adapter dir, weights file or None)]), or None if not PEFT."""
    if path.is_file():
        if path.name in WEIGHTS_NAMES and (path.parent / CONFIG_NAME).is_file():
            return path.parent, [(_name_of(path.parent), path.parent, path)]
        if path.name == CONFIG_NAME:
            path = path.parent
        else:
            return None
    if not path.is_dir():
        return None
    found: list[tuple[str, Path, Path | None]] = []
    if (path / CONFIG_NAME).is_file():
        found.append((_name_of(path), path, _weights_file(path)))
    elif _has_model_weights(path):
        return None
    for sub in _sub_adapters(path):
        found.append((sub.name, sub, _weights_file(sub)))
    if not found:
        return None
    return path, found


def _is_save_root(directory: Path) -> bool:
    """Whether ``directory`` is where a PEFT ``save_pretrained`` wrote: it holds the
    root adapter, or the model card PEFT writes there (``library_name: peft``) even
    when only named adapters were saved."""
    if (directory / CONFIG_NAME).is_file():
        return True
    try:
        with open_regular(directory / "README.md") as fh:  # never a FIFO or device: it could block forever
            head = fh.read(MAX_MODEL_CARD_PROBE_BYTES)
    except (OSError, CkptError):
        return False
    return b"library_name: peft" in head


def _name_of(directory: Path) -> str:
    """PEFT saves ``default`` at the root and adapter ``name`` in ``<root>/<name>/``.

    A folder is only taken as a named adapter when its parent is a save root,
    so an output dir that merely happens to be called ``lora`` is ``default``.
    """
    parent = directory.absolute().parent
    if parent != directory.absolute() and _is_save_root(parent) and not _is_trainer_checkpoint(directory):
        return directory.name
    return DEFAULT_NAME


# ---------------------------------------------------------------------------
# adapter_config.json (hostile input)


def _bad(file: Path, field_: str, why: str) -> InvalidFile:
    return InvalidFile(
        f"{file}: field {field_!r} {why}",
        "fix or regenerate adapter_config.json (PEFT's save_pretrained writes it)",
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_patterns(file: Path, name: str, value: Any, number: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(
            file, name, f"must be an object mapping module patterns to values, not {type(value).__name__}"
        )
    for key, v in value.items():
        ok = _is_num(v) if number else (_is_int(v) and v > 0)
        if not ok:
            raise _bad(
                file,
                name,
                f"entry {key!r} has invalid value {v!r} (expected {'a number' if number else 'a positive integer'})",
            )
        try:
            re.compile(rf"(.*\.)?({key})$")
        except re.error as exc:
            raise _bad(file, name, f"entry {key!r} is not a valid regular expression ({exc})") from None
    return value


def parse_config(file: Path) -> dict[str, Any]:
    """Read and type-check ``adapter_config.json``; unknown keys are kept and ignored (as PEFT does).

    Raises:
        InvalidFile: naming the file and the offending field.
    """
    config = read_json(file, "the adapter config")
    if not isinstance(config, dict):
        raise InvalidFile(
            f"{file}: expected a JSON object, found a JSON {type(config).__name__}",
            "fix or regenerate adapter_config.json",
        )
    peft_type = config.get("peft_type")
    if peft_type is None:
        raise _bad(file, "peft_type", "is missing (it is the one key PEFT requires)")
    if not isinstance(peft_type, str) or not re.fullmatch(r"[A-Za-z0-9_]+", peft_type):
        raise _bad(file, "peft_type", f'must be a tuner name such as "LORA", not {peft_type!r}')

    def check(name: str, ok: Any, expected: str, optional: bool = True) -> None:
        if name not in config or (optional and config[name] is None):
            return
        if not ok(config[name]):
            raise _bad(file, name, f"must be {expected}, not {config[name]!r}")

    check("r", lambda v: _is_int(v) and v > 0, "a positive integer", optional=False)
    check("lora_alpha", _is_num, "a number", optional=False)
    check(
        "target_modules",
        lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
        "a list of module names or a regular expression string",
    )
    check(
        "modules_to_save",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of module names",
    )
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias", "inference_mode"):
        check(flag, lambda v: isinstance(v, bool), "true or false")
    check("bias", lambda v: v in ("none", "all", "lora_only"), 'one of "none", "all", "lora_only"')
    check(
        "init_lora_weights",
        lambda v: isinstance(v, (bool, str)),
        "true, false or an initialisation method name",
    )
    check(
        "layer_replication",
        lambda v: (
            isinstance(v, list)
            and all(isinstance(x, list) and len(x) == 2 and all(_is_int(i) for i in x) for x in v)
        ),
        "a list of [start, end] layer ranges",
    )
    for name in ("base_model_name_or_path", "task_type", "peft_version", "revision"):
        check(name, lambda v: isinstance(v, str), "a string")
    check(
        "target_parameters",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of parameter names",
    )
    if peft_type.upper() == "ADALORA":
        _check_adalora_masks(file, config.get("rank_pattern"))
        check("init_r", lambda v: _is_int(v) and v > 0, "a positive integer")
        check("target_r", lambda v: _is_int(v) and v > 0, "a positive integer")
    else:
        _check_patterns(file, "rank_pattern", config.get("rank_pattern"), number=False)
    _check_patterns(file, "alpha_pattern", config.get("alpha_pattern"), number=True)
    if isinstance(config.get("target_modules"), str):
        try:
            re.compile(config["target_modules"])
        except re.error as exc:
            raise _bad(file, "target_modules", f"is not a valid regular expression ({exc})") from None
    return config


def _check_adalora_masks(file: Path, value: Any) -> None:
    """AdaLoRA saves ``rank_pattern`` as ``{"<module>.lora_E": [true, false, ...]}``: the learned rank mask
    of each module (its true entries are the ranks kept), not PEFT LoRA's pattern -> rank mapping."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad(file, "rank_pattern", f"must map module names to rank masks, not {type(value).__name__}")
    for key, mask in value.items():
        if not (isinstance(mask, list) and len(mask) <= MAX_LORA_RANK and all(isinstance(x, bool) for x in mask)):
            raise _bad(file, "rank_pattern", f"entry {key!r:.80} is not an AdaLoRA rank mask (a list of true/false)")


def _targets(config: dict[str, Any]) -> Any:
    """``target_modules`` as saved, plus the ``target_parameters`` (LoRA on nn.Parameter, e.g. MoE experts)."""
    modules = config.get("target_modules")
    params = [p for p in config.get("target_parameters") or [] if isinstance(p, str)]
    if not params:
        return modules
    if modules is None:
        return params
    return ([modules] if isinstance(modules, str) else list(modules)) + params


def lora_summary(config: dict[str, Any], modules: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``lora`` dict of the inspect schema (names other helpers rely on).

    ``modules`` (from ``_analyse_lora``) gives the ranks the tensors really have: AdaLoRA ignores ``r``
    (its budget is ``init_r``, pruned per module to the learned masks), so its ``r`` is read from them.
    """
    out = _lora_summary_fields(config)
    if str(config.get("peft_type", "")).upper() == "ADALORA":
        ranks = sorted({e["r"] for e in (modules or {}).values() if isinstance(e.get("r"), int)})
        out["init_r"] = config.get("init_r", 12)
        out["target_r"] = config.get("target_r", 8)
        out["r"] = ranks[-1] if ranks else out["init_r"]
        out["rank_range"] = [ranks[0], ranks[-1]] if ranks else None
        out["rank_pattern"] = {k: sum(v) for k, v in (config.get("rank_pattern") or {}).items()}
    if config.get("target_parameters"):
        out["target_parameters"] = list(config["target_parameters"])
    return out


def _lora_summary_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "r": config.get("r", 8),
        "alpha": config.get("lora_alpha", 8),
        "targets": _targets(config),
        "use_rslora": bool(config.get("use_rslora", False)),
        "use_dora": bool(config.get("use_dora", False)),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
        "rank_pattern": config.get("rank_pattern") or {},
        "alpha_pattern": config.get("alpha_pattern") or {},
        "modules_to_save": config.get("modules_to_save"),
        "bias": config.get("bias", "none"),
        "lora_bias": bool(config.get("lora_bias", False)),
        "init_lora_weights": config.get("init_lora_weights", True),
        "layer_replication": config.get("layer_replication"),
    }


_REGEX_SPENT: dict[str, float] = {}  # seconds spent in slow matches of each user pattern in this process
_SLOW_MATCH = 0.001  # real patterns match a module name in microseconds


def user_regex_match(pattern: str, text: str, *, full: bool, field_: str) -> bool:
    """``re.match`` / ``re.fullmatch`` of a user-supplied pattern, bounded in time.

    PEFT evaluates ``target_modules`` / ``rank_pattern`` / ``alpha_pattern`` with ``re`` against every
    module name; a catastrophic-backtracking pattern (``(a+)+$``) in a downloaded adapter_config.json
    would hang inspect and merge. The ``regex`` engine (same syntax and results as ``re`` in its
    default VERSION0 mode, which a test checks) stops after ``MAX_REGEX_MATCH_SECONDS`` per match and
    ``MAX_REGEX_TOTAL_SECONDS`` over all matches of one pattern in this process. Patterns were
    already checked to compile with ``re`` (parse_config), so only ``re``'s syntax is ever accepted.

    Raises:
        InvalidFile: the match takes too long, or the module name is absurdly long.
    """
    import regex  # only when a config actually uses patterns (import costs ~15 ms)

    if len(text) > MAX_MODULE_NAME_CHARS:
        raise InvalidFile(f"module name of {len(text)} characters (limit {MAX_MODULE_NAME_CHARS}): {text[:80]!r}...")
    spent = _REGEX_SPENT.get(pattern, 0.0)
    timeout = min(MAX_REGEX_MATCH_SECONDS, MAX_REGEX_TOTAL_SECONDS - spent)
    start = time.perf_counter()
    try:
        if timeout <= 0:
            raise TimeoutError
        if full:
            return regex.fullmatch(pattern, text, timeout=timeout) is not None
        return regex.match(pattern, text, timeout=timeout) is not None
    except TimeoutError:
        if timeout < MAX_REGEX_MATCH_SECONDS:
            raise InvalidFile(
                f"the pattern {pattern!r:.100} in {field_} takes more than {MAX_REGEX_TOTAL_SECONDS:g} s in total "
                "to match the module names",
                "simplify the regular expression (it backtracks)",
            ) from None
        raise InvalidFile(
            f"the pattern {pattern!r:.100} in {field_} takes more than {MAX_REGEX_MATCH_SECONDS * 1000:g} ms "
            f"to match module {text!r:.100}",
            "simplify the regular expression (it backtracks catastrophically)",
        ) from None
    except regex.error as exc:  # pragma: no cover - parse_config compiled it with re already
        raise InvalidFile(f"the pattern {pattern!r:.100} in {field_} is not a valid regular expression ({exc})") from None
    finally:
        elapsed = time.perf_counter() - start
        if elapsed > _SLOW_MATCH:  # only slow matches count, so a long-lived process never runs out
            _REGEX_SPENT[pattern] = spent + elapsed


def pattern_key(patterns: dict[str, Any], module: str, field_: str = "rank_pattern/alpha_pattern") -> str | None:
    r"""PEFT's ``get_pattern_key``: the first pattern (dict order) matching the module name
    (``module`` without the ``base_model.model.`` prefix), as ``re.match(rf"(.*\.)?({key})$", module)``."""
    for key in patterns:
        if user_regex_match(rf"(.*\.)?({key})$", module, full=False, field_=field_):
            return key
    return None


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """The per-module value (r or alpha) PEFT uses: the matching pattern's, else ``default``.

    Like ``get_pattern_key``, an entry named exactly like the module counts even when, read as a
    regex, it does not match its own text.
    """
    key = pattern_key(patterns, module)
    return patterns.get(module if key is None else key, default)


def targets_module(targets: Any, module: str) -> bool:
    """Whether PEFT's ``target_modules`` (list of suffixes or a full-match regex) selects ``module``."""
    if isinstance(targets, str):
        return user_regex_match(targets, module, full=True, field_="target_modules")
    if isinstance(targets, list):
        return any(module == t or module.endswith("." + t) for t in targets)
    return False


# ---------------------------------------------------------------------------
# key analysis


@dataclass
class _Adapter:
    name: str
    dir: Path
    weights: Path
    config: dict[str, Any]
    tensors: list[TensorInfo]
    container: str
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    full: list[str] = field(default_factory=list)
    repairs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def peft_type(self) -> str:
        return str(self.config["peft_type"]).upper()


def _module_name(key: str) -> str:
    return key.removeprefix(KEY_PREFIX)


def _examples(items: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _analyse_lora(ad: _Adapter) -> None:
    """Group LoRA tensors by module and check pairing, emptiness and ranks."""
    by_name = {t.name: t for t in ad.tensors}
    for t in ad.tensors:
        key = t.name
        if ".lora_" not in key:
            for pattern, repl in _DAMAGED:
                if pattern.match(key):
                    ad.repairs[key] = pattern.sub(repl, key)
                    key = ad.repairs[t.name]
                    break
        mod = _module_name(key)
        m = _LORA_KEY.match(mod) or _LORA_EMB.match(mod)
        if m:
            entry = ad.modules.setdefault(m["mod"], {})
            kind = "embedding" if "lora_embedding_" in mod else "linear"
            entry.setdefault("type", kind)
            leaf = m.groupdict().get("leaf") or "weight"
            slot = m["part"] if leaf == "weight" else m["part"] + "_bias"
            entry[slot] = t.name
            continue
        m = _LORA_MAG.match(mod)
        if m:
            ad.modules.setdefault(m["mod"], {})["magnitude"] = t.name
            continue
        m = _LORA_E.match(mod)
        if m:
            ad.modules.setdefault(m["mod"], {})["E"] = t.name
            continue
        ad.full.append(t.name)

    cfg = ad.config
    adalora = ad.peft_type == "ADALORA"
    rank_pattern = {} if adalora else (cfg.get("rank_pattern") or {})
    masks = (cfg.get("rank_pattern") or {}) if adalora else {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    r0, alpha0 = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    params = [p for p in cfg.get("target_parameters") or [] if isinstance(p, str)]
    unpaired: list[str] = []
    bad_shape: list[str] = []
    wrong_rank: list[str] = []
    bad_scale: list[str] = []
    for mod, entry in ad.modules.items():
        entry["r"] = pattern_value(rank_pattern, mod, r0)
        entry["alpha"] = pattern_value(alpha_pattern, mod, alpha0)
        a, b = by_name.get(entry.get("A", "")), by_name.get(entry.get("B", ""))
        if (a is None) != (b is None) or (a is None and b is None):
            have = "lora_A" if a is not None else ("lora_B" if b is not None else "only a magnitude vector")
            missing = "lora_B" if a is not None else "lora_A" if b is not None else "lora_A and lora_B"
            unpaired.append(f"{mod} has {have} but no {missing}")
            continue
        assert a is not None and b is not None
        if adalora and len(a.shape) == 2 and len(b.shape) == 2 and a.shape[1] and b.shape[0]:
            # AdaLoRA saves each module cut to its learned rank, which may be 0: [0, in] / [out, 0] is legitimate
            _check_adalora_module(mod, entry, a, b, by_name.get(entry.get("E", "")), masks, wrong_rank)
            continue
        if a.numel == 0 or b.numel == 0 or len(a.shape) < 2 or len(b.shape) < 2:
            bad_shape.append(f"{a.name} {list(a.shape)} / {b.name} {list(b.shape)}")
            continue
        wrapped = _param_targets(mod, params)
        if wrapped and ad.peft_type == "LORA":
            # target_parameters: a ParamWrapper stacks the experts' ranks: A (r*E, in), B (out, r*E)
            ranks = {pattern_value(rank_pattern, p, r0) for p in wrapped}
            rows = a.shape[0]
            entry["parameters"] = wrapped
            if rows != b.shape[1] or not any(isinstance(r, int) and r > 0 and rows % r == 0 for r in ranks):
                wrong_rank.append(
                    f"{mod}: lora_A {list(a.shape)}, lora_B {list(b.shape)} do not stack r={sorted(ranks)} per expert"
                )
            else:
                r = next(r for r in sorted(ranks) if rows % r == 0)
                entry["r"], entry["experts"] = r, rows // r
        elif ad.peft_type == "LORA":
            r = entry["r"]
            if a.shape[0] != r or b.shape[1] != r:
                key = pattern_key(rank_pattern, mod)
                source = "r" if key is None else f"rank_pattern[{key!r}]"
                wrong_rank.append(
                    f"{mod}: lora_A {list(a.shape)}, lora_B {list(b.shape)} but {source} says r={r}"
                )
        elif a.shape[0] != b.shape[1]:
            wrong_rank.append(
                f"{mod}: lora_A {list(a.shape)} and lora_B {list(b.shape)} disagree on the rank"
            )
        if ad.peft_type == "LORA":
            problem = scale_problem(entry["alpha"], entry["r"], bool(cfg.get("use_rslora")))
            if problem:
                bad_scale.append(f"{mod}: {problem}")
    problem = scale_problem(alpha0, r0 if not adalora else cfg.get("init_r", 12), bool(cfg.get("use_rslora")))
    if problem and not any(problem in x for x in bad_scale):
        bad_scale.insert(0, f"adapter_config.json: {problem}")
    for key, value in alpha_pattern.items() if isinstance(alpha_pattern, dict) else ():
        problem = scale_problem(value, 1)
        if problem and not any(problem in x for x in bad_scale):
            bad_scale.append(f"alpha_pattern[{key!r:.60}]: {problem}")
    if bad_scale:
        ad.warnings.append(
            f"Adapter '{ad.name}': unusable LoRA scale ({_examples(bad_scale, 2)}). Python's JSON reader accepts "
            "NaN, Infinity and 1e999, and PEFT would merge them into NaN/inf weights without an error; "
            "ckpt-tool merge refuses. Set lora_alpha / r to the values used in training."
        )

    unprefixed = [t.name for t in ad.tensors if not t.name.startswith(KEY_PREFIX)]
    if unprefixed:
        ad.warnings.append(
            f"Adapter '{ad.name}': {len(unprefixed)} tensor key(s) do not start with '{KEY_PREFIX}' "
            f"(e.g. {unprefixed[0]!r}). PEFT matches saved keys against 'base_model.model.<module path>' and "
            "silently skips the others, so these tensors would not be loaded; the file was probably written from a "
            "raw model state dict. Rename the keys with the prefix (or re-save with save_pretrained)."
        )
    if ad.repairs:
        old = list(ad.repairs)
        ad.warnings.append(
            f"Adapter '{ad.name}': {len(old)} tensor key(s) were damaged on disk by the adapter-name stripping of "
            f"PEFT <= 0.17 (an adapter named 'lora' lost the '.lora' of '.lora_A'), e.g. {old[0]!r} instead of "
            f"{ad.repairs[old[0]]!r}. PEFT does not recognise these keys, so loading silently leaves the adapter "
            "at its initial values. They can be repaired by restoring '.lora_' in the key names "
            "(and the adapter should be renamed so it is not saved this way again)."
        )
    if unpaired:
        ad.warnings.append(
            f"Adapter '{ad.name}': {len(unpaired)} module(s) lack half of their LoRA pair ({_examples(unpaired, 2)}). "
            "PEFT loads with strict=False, so those modules would keep a randomly initialised or zero half and the "
            "adapter would not behave as trained; re-save it from the training run."
        )
    if bad_shape:
        ad.warnings.append(
            f"Adapter '{ad.name}': {len(bad_shape)} LoRA tensor pair(s) are empty or 1-D ({_examples(bad_shape, 2)}). "
            "This is what a DeepSpeed ZeRO-3 / FSDP save looks like when the parameter shards were not gathered: the "
            "adapter is unusable. Re-save inside deepspeed.zero.GatheredParameters(..., modifier_rank=None) or "
            "FSDP summon_full_params (or with stage3_gather_16bit_weights_on_model_save=true)."
        )
    if wrong_rank:
        ad.warnings.append(
            f"Adapter '{ad.name}': {len(wrong_rank)} module(s) have LoRA shapes that disagree with the rank in "
            f"adapter_config.json ({_examples(wrong_rank, 2)}). PEFT would fail with a size mismatch when loading; "
            "fix r / rank_pattern in adapter_config.json to match the tensors."
        )
    has_mag = any("magnitude" in e for e in ad.modules.values())
    if ad.peft_type == "LORA" and has_mag and not cfg.get("use_dora", False):
        ad.warnings.append(
            f"Adapter '{ad.name}' holds DoRA magnitude vectors but use_dora is false in adapter_config.json: PEFT "
            'would ignore them and the adapter would not behave as trained; set "use_dora": true.'
        )
    if ad.peft_type == "LORA" and cfg.get("use_dora", False) and ad.modules and not has_mag:
        ad.warnings.append(
            f"Adapter '{ad.name}' sets use_dora but holds no lora_magnitude_vector tensors: PEFT would start the "
            "magnitudes from the base weights' norms, which is not what was trained; re-save the adapter."
        )
    if not ad.modules and not ad.full and ad.tensors == []:
        ad.warnings.append(f"Adapter '{ad.name}' holds no tensors at all: it does nothing when loaded.")
    elif not ad.modules and ad.peft_type == "LORA":
        ad.warnings.append(
            f"Adapter '{ad.name}' is a LoRA adapter without any lora_A/lora_B tensors: loading it changes only "
            "the full tensors it carries (if any). Check that the save captured the adapter."
        )


def _strip_base_layer(module: str) -> str:
    return ".".join(p for p in module.split(".") if p != "base_layer")


def _param_targets(module: str, params: list[str]) -> list[str]:
    """The full parameter names of ``target_parameters`` a saved module path can wrap (PEFT matches
    ``f"{module without .base_layer}.{param}"`` exactly or as a ``.``-suffix); nested wrappers of one
    module (one per targeted parameter) carry one ``.base_layer`` per level."""
    if not params:
        return []
    unwrapped = _strip_base_layer(module)
    out = []
    for t in params:
        key = f"{unwrapped}.{t.rpartition('.')[2]}"
        if key == t or key.endswith("." + t):
            out.append(key)
    return out


def _check_adalora_module(
    mod: str,
    entry: dict[str, Any],
    a: TensorInfo,
    b: TensorInfo,
    e: TensorInfo | None,
    masks: dict[str, Any],
    wrong_rank: list[str],
) -> None:
    """AdaLoRA: the module's rank is the tensors' (lora_A rows = lora_E rows = lora_B columns), and it must
    equal the number of ranks its saved mask keeps."""
    rank = a.shape[0]
    entry["r"] = rank
    if b.shape[1] != rank or (e is not None and tuple(e.shape) != (rank, 1)):
        wrong_rank.append(
            f"{mod}: lora_A {list(a.shape)}, lora_E {list(e.shape) if e else None}, lora_B {list(b.shape)} "
            "disagree on the rank"
        )
        return
    mask = masks.get(f"{mod}.lora_E")
    if isinstance(mask, list) and sum(mask) != rank:
        wrong_rank.append(f"{mod}: rank {rank} in the tensors but its rank_pattern mask keeps {sum(mask)}")


def _check_name(ad: _Adapter, all_modules: set[str]) -> None:
    """Warn about adapter names PEFT mishandles (formats.md §3, PEFT #2252/#2254 and #3584)."""
    name = ad.name
    prefix = known_prefix(ad.peft_type)
    if name in prefix:
        ad.warnings.append(
            f"Adapter name '{name}' is contained in the {ad.peft_type} tuner prefix '{prefix}': PEFT may "
            "re-initialise this adapter's weights when loading it (and PEFT <= 0.17 mangled its keys when saving). "
            f"Rename it, e.g. rename the folder '{name}' to '{name}_adapter' and load it under that name."
        )
    hits = sorted(m for m in all_modules if name in m.split("."))
    if hits:
        ad.warnings.append(
            f"Adapter name '{name}' equals a module path segment (e.g. {hits[0]!r}): when PEFT saves adapters "
            f"next to it, it silently drops every tensor whose key contains '.{name}.' from the others (PEFT #3584), "
            f"so sibling adapters in this folder may be missing tensors. Rename the adapter (e.g. '{name}_adapter') "
            "and re-save."
        )


def _check_dropped(adapters: list[_Adapter]) -> None:
    """Name a sibling's modules that an adapter targets but lacks because of #3584."""
    names = {ad.name for ad in adapters}
    for ad in adapters:
        if ad.peft_type not in LORA_TYPES:
            continue
        have = set(ad.modules)
        lost = sorted(
            mod
            for other in adapters
            if other is not ad
            for mod in other.modules
            if mod not in have
            and targets_module(ad.config.get("target_modules"), mod)
            and (names - {ad.name}) & set(mod.split("."))
        )
        if lost:
            ad.warnings.append(
                f"Adapter '{ad.name}' targets {len(lost)} module(s) it holds no tensors for (e.g. {lost[0]!r}): "
                "they were dropped at save because a sibling adapter is named like a path segment (PEFT #3584). "
                "Those modules stay unadapted when loaded; rename the sibling adapter and re-save from training."
            )


# ---------------------------------------------------------------------------
# entry point


def _read(name: str, directory: Path, weights: Path | None, probe: Any) -> _Adapter:
    config_file = directory / CONFIG_NAME
    config = parse_config(config_file)
    if weights is None:
        raise InvalidFile(
            f"{directory}: adapter_config.json without adapter_model.safetensors or adapter_model.bin",
            "the save was incomplete; copy the weights file next to adapter_config.json",
        )
    container = probe.container(weights)
    ad = _Adapter(name, directory, weights, config, list(container.tensors.values()), container.kind)
    if ad.peft_type in LORA_TYPES:
        _analyse_lora(ad)
    else:
        ad.full = [t.name for t in ad.tensors]
        if ad.peft_type not in TUNER_PREFIXES and not ad.tensors:
            ad.warnings.append(f"Adapter '{name}' holds no tensors at all: it does nothing when loaded.")
    return ad


def _info(ad: _Adapter) -> AdapterInfo:
    return AdapterInfo(
        name=ad.name,
        adapter_type=ad.peft_type.lower(),
        path=str(ad.dir.absolute()),
        lora=lora_summary(ad.config, ad.modules) if ad.peft_type in LORA_TYPES else None,
        tensors=len(ad.tensors),
        parameters=sum(t.numel for t in ad.tensors),
        config=ad.config,
    )


def _details(ad: _Adapter) -> dict[str, Any]:
    """What the merge plan needs of one adapter (plugin-private, in ``CheckpointInfo.details``)."""
    return {
        "config": ad.config,
        "dir": str(ad.dir.absolute()),
        "weights": str(ad.weights.absolute()),
        "modules": ad.modules,
        "full_tensors": ad.full,
        "repairs": ad.repairs,
    }


def detect(path: Path, probe: Any) -> CheckpointInfo | None:
    """Describe the PEFT adapter(s) at ``path`` (a dir, its config or its weights file), or None."""
    path = Path(path)
    located = _locate(path)
    if located is None:
        return None
    root, found = located
    adapters = [_read(name, directory, weights, probe) for name, directory, weights in found]
    all_modules = {m for ad in adapters for m in ad.modules} | {
        _module_name(t.name).rsplit(".", 1)[0] for ad in adapters for t in ad.tensors
    }
    for ad in adapters:
        _check_name(ad, all_modules)
    _check_dropped(adapters)

    top = next((ad for ad in adapters if ad.name == DEFAULT_NAME), adapters[0])
    peft_type = top.peft_type
    warnings = [w for ad in adapters for w in ad.warnings]
    if peft_type not in TUNER_PREFIXES and peft_type not in (
        "PROMPT_TUNING",
        "P_TUNING",
        "PREFIX_TUNING",
        "MULTITASK_PROMPT_TUNING",
        "ADAPTION_PROMPT",
    ):
        warnings.append(
            f"PEFT tuner '{peft_type}' is not one ckpt-tool knows in detail: only names and shapes are reported."
        )
    metadata: dict[str, Any] = {
        "base_model_name_or_path": top.config.get("base_model_name_or_path"),
        "task_type": top.config.get("task_type"),
    }
    if top.config.get("peft_version") is not None:
        metadata["peft_version"] = top.config["peft_version"]
    snapshots = trainer_checkpoints(root) if root.is_dir() and root == path else []
    if snapshots:
        metadata["trainer_checkpoints"] = snapshots
    description = f"{peft_type} adapter '{top.name}'"
    if len(adapters) > 1:
        description += (
            f" (+{len(adapters) - 1} more: {', '.join(ad.name for ad in adapters if ad is not top)})"
        )
    return CheckpointInfo(
        path=str(path),
        format=FORMAT,
        kind="adapter",
        adapter_type=peft_type.lower(),
        container=top.container,
        files=[str(top.weights.absolute())],
        tensors=list(top.tensors),
        lora=lora_summary(top.config, top.modules) if peft_type in LORA_TYPES else None,
        adapters=[_info(ad) for ad in adapters],
        warnings=warnings,
        metadata=metadata,
        description=description,
        details={
            **_details(top),
            "adapter_name": top.name,
            "adapters": {ad.name: _details(ad) for ad in adapters},
        },
    )
