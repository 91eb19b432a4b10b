"""PEFT adapter names and damaged keys: the knowledge behind ``rename --adapter/--to`` and ``rename --repair``.

Adapter names (formats.md §3). PEFT saves adapter ``default`` at the root of the
save directory and any other adapter ``name`` in ``<root>/<name>/``; the name is
stored nowhere else (not in ``adapter_config.json``, not in the tensor keys). So
renaming an adapter is moving its files:

* ``a`` → ``b`` (both named): one ``rename(2)`` of the folder, never replacing.
* ``default`` → ``b``: the root's ``adapter_config.json`` and weights move into
  ``<root>/b/``. Steps: create a temp-named folder, hard-link the weights into it,
  then the config, rename the folder to ``b`` (from that instant ``b`` is a
  complete adapter and ``default`` still is one: both load), remove the root's
  config (``default`` is gone), then the root's weights. The model card
  ``README.md`` stays at the root, where PEFT writes it. A temp folder left by a
  killed run is removed by the next run (Ctrl-C removes it at once).
* ``a`` → ``default``: the same in the other direction; ``<root>/a/`` must hold
  nothing but the adapter's files, and is removed at the end.

After any step the directory loads: every adapter that has a config has its
weights, and the half-done states are recognisable from the disk alone (the
files at the destination are links to, or copies of, the source's), so
rerunning the same command finishes the rename; no journal is needed.

Names PEFT mis-handles are refused with the reason: a name contained in the
tuner prefix (``lora`` ⊂ ``lora_``, PEFT #2252: PEFT warns it may re-initialise the
adapter when loading, and PEFT <= 0.17 damaged its keys when saving), and a name
equal to a segment of the module paths (``mlp``, PEFT #3584: saving the *other*
adapters silently drops every tensor whose key contains ``.mlp.``).

Repairs. PEFT <= 0.17 removed the adapter name with ``key.replace(f".{name}", "")``;
for an adapter named ``lora`` that also ate the ``.lora`` of ``.lora_A``, so the
files hold ``….q_proj_A.weight`` (``_B``, ``_embedding_A``, ``_magnitude_vector``).
Detection finds them (``detect._DAMAGED``); ``repair_keys`` checks the restored
names against ``adapter_config.json`` before the core rewrites anything.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import unicodedata
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, NotFound, Refused, Unsupported, UsageError
from ckpt_tool.io.atomic import TEMP_PREFIX, is_stale_temp, temp_prefix
from ckpt_tool.io.container import read_container
from ckpt_tool.io.dirops import same_content
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.rename import AdapterRenamePlan, FileOp, KeyRepair
from ckpt_tool_peft.detect import (
    CONFIG_NAME,
    DEFAULT_NAME,
    FORMAT,
    KEY_PREFIX,
    WEIGHTS_NAMES,
    _Adapter,
    _analyse_lora,
    _is_trainer_checkpoint,
    _sub_adapters,
    known_prefix,
    parse_config,
    targets_module,
)

ADAPTER_FILES = (CONFIG_NAME, *WEIGHTS_NAMES)
#: Segments of the *live* parameter names PEFT builds (``q_proj.lora_A.<name>.weight``,
#: ``lm_head.modules_to_save.<name>.weight``): an adapter named like one of them breaks
#: ``_filter_state_dict_for_adapter_name`` for its siblings just like a module name.
LIVE_SEGMENTS = (
    "base_layer",
    "modules_to_save",
    "original_module",
    "lora_dropout",
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "weight",
    "bias",
)
MAX_NAME_BYTES = 255


# --- adapter names -------------------------------------------------------------------------------------


def folder_name_problems(name: str) -> list[str]:
    """Why ``name`` cannot be an adapter folder (empty list: it can)."""
    problems = []
    if not name:
        return ["is empty"]
    if "/" in name or "\\" in name or "\0" in name:
        problems.append("contains a path separator or NUL, so it is not a single folder name")
    if "." in name:
        problems.append(
            "contains '.', which torch forbids in module names (PEFT keeps each adapter under its name in "
            "nn.ModuleDicts, so PEFT refuses it); it would also make a hidden or relative folder"
        )
    if name != name.strip():
        problems.append("starts or ends with whitespace")
    if any(unicodedata.category(c).startswith("C") for c in name):
        problems.append("contains control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problems.append(f"is longer than the {MAX_NAME_BYTES} bytes a folder name may have")
    return problems


#: Module names of most transformers LLMs (LLaMA/Mistral/Qwen/Gemma, GPT-2, GPT-NeoX, Falcon, Phi), refused
#: even when neither the saved keys nor a local base model show them: adding an adapter on the MLP later
#: would hit PEFT #3584 just the same.
COMMON_SEGMENTS = (
    "model", "layers", "h", "transformer", "decoder", "encoder", "gpt_neox", "self_attn", "attn", "attention",
    "self_attention", "mlp", "embed_tokens", "lm_head", "norm", "ln_f", "wte", "embed_in", "embed_out",
)  # fmt: skip


def _segments(adapters: dict[str, Path]) -> dict[str, str]:
    """Module path segments the adapters here live in -> where they occur.

    From the saved keys of every adapter of the directory, the tensor names of the
    base model when ``base_model_name_or_path`` is a local directory (headers only;
    never downloads), the parameter names PEFT builds, and ``COMMON_SEGMENTS``.
    """
    out: dict[str, str] = {}

    def add(names: Any, where: str) -> None:
        for name in names:
            module = name.removeprefix(KEY_PREFIX)
            for seg in module.split("."):
                out.setdefault(seg, f"e.g. {module!r}, {where}")

    bases: list[Path] = []
    for directory in adapters.values():
        weights = next((directory / n for n in WEIGHTS_NAMES if (directory / n).is_file()), None)
        if weights is not None:
            add(read_container(weights).tensors, "a saved adapter key")
        try:
            base = parse_config(directory / CONFIG_NAME).get("base_model_name_or_path")
        except CkptError:
            base = None
        if isinstance(base, str) and base and os.path.isdir(base) and Path(base) not in bases:
            bases.append(Path(base))
    for base in bases[:4]:
        from ckpt_tool.ops.inspect import detect

        try:
            add([t.name for t in detect(base).tensors], "in the base model")
        except (CkptError, OSError):
            continue
    for seg in LIVE_SEGMENTS:
        out.setdefault(seg, f"PEFT names its parameters '….{seg}.<adapter name>…'")
    for seg in COMMON_SEGMENTS:
        out.setdefault(seg, "a module name in the paths of most transformers models")
    return out


def name_problems(name: str, peft_type: str, segments: dict[str, str]) -> list[str]:
    """Why PEFT would mis-handle an adapter called ``name`` (empty list: it would not)."""
    problems = []
    prefix = known_prefix(peft_type)
    if name in prefix:
        problems.append(
            f"'{name}' is contained in the {peft_type} tuner prefix '{prefix}' (PEFT #2252): PEFT warns that it may "
            "re-initialise the adapter's weights when loading it, and PEFT <= 0.17 damaged its keys when saving"
        )
    if name in segments:
        problems.append(
            f"'{name}' equals a module path segment ({segments[name]}; PEFT #3584): when PEFT saves the "
            f"other adapters of the model, it silently drops every tensor whose key contains '.{name}.'"
        )
    return problems


def _adapters_at(root: Path) -> dict[str, Path]:
    """The complete-or-not adapters PEFT's layout puts at ``root``: ``default`` at the root, named ones below."""
    found: dict[str, Path] = {}
    if (root / CONFIG_NAME).is_file():
        found[DEFAULT_NAME] = root
    for sub in _sub_adapters(root):
        if not sub.name.startswith(TEMP_PREFIX):
            found[sub.name] = sub
    return found


def _peft_type(directory: Path) -> str:
    config = parse_config(directory / CONFIG_NAME)
    return str(config["peft_type"]).upper()


def _present(directory: Path, names: tuple[str, ...] = ADAPTER_FILES) -> list[str]:
    return [n for n in names if (directory / n).is_file() and not (directory / n).is_symlink()]


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))[:10_000]
    except OSError:
        return []


def _moves(src: Path, dst: Path, files: list[str]) -> list[FileOp]:
    """Link the weights, then the config (which makes ``dst`` an adapter); then unlink the config at ``src``
    (``src`` stops being one), then its weights. Files already at ``dst`` (a resumed run) are not linked again."""
    ops: list[FileOp] = []
    weights = [f for f in files if f != CONFIG_NAME]
    for f in [*weights, CONFIG_NAME]:
        if not (dst / f).exists():
            why = "the weights first: a folder without a config is no adapter"
            if f == CONFIG_NAME:
                why = "the config last: from here both names load"
            ops.append(FileOp("link", src / f, dst / f, why))
    ops.append(FileOp("unlink", src / CONFIG_NAME, None, "the old name stops being an adapter"))
    ops.extend(FileOp("unlink", src / f, None, "") for f in weights)
    return ops


def _stale_temp_dirs(root: Path) -> list[FileOp]:
    """Steps removing the temp folders of renames killed before their folder got its name.

    Only folders named like this machine's temp files of a dead process, holding
    nothing but adapter files (links or copies), are removed.
    """
    ops: list[FileOp] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)[:10_000]
    except OSError:
        return ops
    for e in entries:
        if not (e.name.startswith(TEMP_PREFIX) and e.is_dir(follow_symlinks=False) and is_stale_temp(e.name)):
            continue
        inner = _entries(Path(e.path))
        if all(
            (n in ADAPTER_FILES or n.startswith(TEMP_PREFIX)) and os.path.isfile(os.path.join(e.path, n))
            and not os.path.islink(os.path.join(e.path, n))
            for n in inner
        ):
            why = "left over from a rename that was killed"
            ops += [FileOp("unlink", Path(e.path) / n, None, why) for n in inner]
            ops.append(FileOp("rmdir", Path(e.path), None, why))
    return ops


def _exists_refusal(target: Path, what: str) -> Refused:
    return Refused(f"{target} already exists ({what})", "choose another name; existing adapters and folders are never replaced")


def plan_adapter_rename(source: CheckpointInfo, old: str, new: str) -> AdapterRenamePlan | None:
    """The crash-safe steps that rename adapter ``old`` to ``new`` (see the module docstring), changing nothing."""
    if source.format != FORMAT:
        return None
    for label, value in (("--adapter", old), ("--to", new)):
        problems = folder_name_problems(value)
        if problems:
            raise UsageError(
                f"{label} {value!r} is not a valid adapter name: " + "; ".join(problems),
                "use letters, digits, '_' or '-', e.g. 'chat_adapter'",
            )
    details = source.details or {}
    known: dict[str, Any] = details.get("adapters") or {}
    given = Path(os.path.abspath(source.path))
    given_dir = given if given.is_dir() else given.parent
    if old in known:
        src_dir = Path(known[old]["dir"]).absolute()
        root = src_dir if old == DEFAULT_NAME else src_dir.parent
    else:
        root = given_dir
        src_dir = root if old == DEFAULT_NAME else root / old
    target = root if new == DEFAULT_NAME else root / new
    at = _adapters_at(root)
    typed = src_dir if old in at else (target if new in at else None)
    peft_type = _peft_type(typed) if typed is not None else "LORA"
    refusals = name_problems(new, peft_type, _segments(at))
    if refusals:
        raise Refused(
            f"adapter name {new!r} would be mis-handled by PEFT:\n" + "\n".join(f"  - {p}" for p in refusals),
            "choose another name, e.g. " + repr(f"{new}_adapter" if new not in ("", "_") else "my_adapter"),
        )

    resumed = False
    if old == DEFAULT_NAME:
        if old in at:
            if _is_trainer_checkpoint(root):
                raise Refused(
                    f"{root} is a transformers.Trainer checkpoint: resume_from_checkpoint loads the adapter from its "
                    "root, so moving it into a subfolder would break resuming",
                    "copy the adapter elsewhere and rename it there",
                )
            files = [*_present(root, WEIGHTS_NAMES), CONFIG_NAME]
            ops = _stale_temp_dirs(root)
            resumed = bool(ops)
            if os.path.lexists(target):
                # only the state right after the folder was renamed into place: exactly the root's files
                entries = _entries(target) if target.is_dir() and not target.is_symlink() else None
                if entries is None or sorted(entries) != sorted(files) or not all(
                    same_content(root / e, target / e) for e in entries
                ):
                    raise _exists_refusal(target, "an adapter" if new in at else "a file or folder")
                resumed = True
            else:
                tmp = root / f"{temp_prefix()}adapter-{secrets.token_hex(4)}"
                ops.append(FileOp("mkdir", tmp, None, "the new folder, under a temp name until it is complete"))
                weights = [f for f in files if f != CONFIG_NAME]
                ops += [FileOp("link", root / f, tmp / f, "the weights first") for f in weights]
                ops.append(FileOp("link", root / CONFIG_NAME, tmp / CONFIG_NAME, "then the config"))
                ops.append(FileOp("rename", tmp, target, "complete: give it its name (from here both names load)"))
            ops.append(FileOp("unlink", root / CONFIG_NAME, None, "'default' stops being an adapter"))
            ops += [FileOp("unlink", root / f, None, "") for f in files if f != CONFIG_NAME]
        else:
            stray = _present(root, WEIGHTS_NAMES)
            if new in at and stray and all(same_content(root / f, target / f) for f in stray):
                resumed = True
                ops = [FileOp("unlink", root / f, None, "left over from the interrupted rename") for f in stray]
            else:
                raise NotFound(
                    f"{root}: no adapter '{DEFAULT_NAME}' (no adapter_config.json at the root)",
                    "choose one of: " + ", ".join(sorted(at)) if at else "check the path",
                )
    elif new == DEFAULT_NAME:
        if old in at:
            extra = [e for e in _entries(src_dir) if e not in ADAPTER_FILES]
            if extra:
                raise Refused(
                    f"{src_dir} holds more than the adapter ({', '.join(extra[:5])}): those files have no place at the "
                    "root",
                    "move them out of the folder first",
                )
            files = [*_present(src_dir, WEIGHTS_NAMES), CONFIG_NAME]
            at_root = _present(root)
            if at_root:
                if not all(f in files and same_content(src_dir / f, root / f) for f in at_root):
                    raise _exists_refusal(
                        root / at_root[0], "the root already holds an adapter 'default'" if DEFAULT_NAME in at else "adapter files"
                    )
                resumed = True
            ops = _moves(src_dir, root, files) + [FileOp("rmdir", src_dir, None, "the old folder, now empty")]
        else:
            left = _entries(src_dir) if src_dir.is_dir() and not src_dir.is_symlink() else None
            if (
                left is not None
                and DEFAULT_NAME in at
                and all(e in WEIGHTS_NAMES and same_content(src_dir / e, root / e) for e in left)
            ):
                resumed = True
                ops = [FileOp("unlink", src_dir / e, None, "left over from the interrupted rename") for e in left]
                ops.append(FileOp("rmdir", src_dir, None, "the old folder, now empty"))
            else:
                raise NotFound(f"{root}: no adapter named {old!r}", "choose one of: " + ", ".join(sorted(at)) if at else "check the path")
    else:
        if old not in at:
            raise NotFound(f"{root}: no adapter named {old!r}", "choose one of: " + ", ".join(sorted(at)) if at else "check the path")
        if os.path.lexists(target):
            raise _exists_refusal(target, "an adapter" if new in at else "a file or folder")
        ops = [FileOp("rename", src_dir, target, "one atomic rename of the folder")]

    notes = [
        "PEFT keeps the adapter name only in the folder layout (not in adapter_config.json or the keys)",
        _load_hint(root, new, target),
    ]
    if old == DEFAULT_NAME:
        notes.append(f"the root holds no adapter 'default' any more: PeftModel.from_pretrained(model, '{root}') fails")
    return AdapterRenamePlan(old, new, src_dir, target, ops, resumed, notes)


def _load_hint(root: Path, new: str, target: Path) -> str:
    if new == DEFAULT_NAME:
        return f"load it with PeftModel.from_pretrained(model, '{root}') (it is the adapter 'default')"
    return f"load it with PeftModel.from_pretrained(model, '{target}', adapter_name='{new}') or model.load_adapter(...)"


# --- repairs -------------------------------------------------------------------------------------------------


def repair_keys(source: CheckpointInfo, adapter: str | None) -> KeyRepair | None:
    """Restored names for the keys PEFT <= 0.17 damaged, verified against ``adapter_config.json``."""
    if source.format != FORMAT:
        return None
    details = source.details or {}
    found: dict[str, dict[str, Any]] = details.get("adapters") or {}
    if adapter is not None:
        if adapter not in found:
            raise NotFound(f"{source.path}: no adapter named {adapter!r}", "choose one of: " + ", ".join(sorted(found)))
        name = adapter
    else:
        damaged = [n for n, d in found.items() if d.get("repairs")]
        if len(damaged) > 1:
            raise UsageError(
                f"{source.path}: {len(damaged)} adapters have damaged keys ({', '.join(sorted(damaged))})",
                "repair one at a time with --adapter NAME",
            )
        name = damaged[0] if damaged else str(details.get("adapter_name") or DEFAULT_NAME)
    chosen = found[name]
    directory = Path(chosen["dir"])
    repairs: dict[str, str] = dict(chosen.get("repairs") or {})
    if not repairs:
        return KeyRepair(name, directory, {})
    config = chosen["config"]
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise Unsupported(f"{directory}: repairs are known for LoRA adapters only, not {peft_type}")
    weights = Path(chosen["weights"])
    tensors = list(read_container(weights).tensors.values())
    problems = verify(name, directory, weights, config, tensors, repairs)
    if problems:
        raise Refused(
            f"{directory}: the repaired keys would not match adapter_config.json, so the repair is not certain:\n"
            + "\n".join(f"  - {p}" for p in problems[:10])
            + (f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""),
            "nothing was written; check the adapter with 'ckpt-tool inspect'",
        )
    checks = _checks(config, tensors, repairs)
    notes = []
    prefix = known_prefix(peft_type)
    if name in prefix or (name == DEFAULT_NAME and directory.name in prefix):
        shown = name if name != DEFAULT_NAME else directory.name
        notes.append(
            f"the adapter is still called '{shown}', which PEFT mis-handles; "
            + (
                f"rename it: ckpt-tool rename {directory.parent} --adapter {shown} --to {shown}_adapter"
                if name != DEFAULT_NAME
                else f"load it under another name, e.g. adapter_name='{shown}_adapter'"
            )
        )
    return KeyRepair(name, directory, repairs, checks, notes)


def verify(
    name: str, directory: Path, weights: Path, config: dict[str, Any], tensors: list[TensorInfo], repairs: dict[str, str]
) -> list[str]:
    """Every problem of the repaired adapter, checked against its config (empty: the repair is consistent)."""
    problems: list[str] = []
    names = {t.name for t in tensors}
    for old, new in repairs.items():
        if new in names and new not in repairs:
            problems.append(f"{old!r} would become {new!r}, which the file already holds")
    renamed = [dataclasses.replace(t, name=repairs.get(t.name, t.name)) for t in tensors]
    ad = _Adapter(name, directory, weights, config, renamed, "safetensors")
    _analyse_lora(ad)
    problems += [f"{k!r} still looks damaged after the repair" for k in ad.repairs]
    targets = config.get("target_modules")
    use_dora = bool(config.get("use_dora", False))
    by_name = {t.name: t for t in renamed}
    for mod, entry in sorted(ad.modules.items()):
        if "parameters" in entry:
            continue  # LoRA on nn.Parameter: ranks stack per expert; detection checks those
        a, b = by_name.get(entry.get("A", "")), by_name.get(entry.get("B", ""))
        r = entry.get("r")
        if a is None or b is None:
            problems.append(f"{mod}: has {'lora_A' if a else 'lora_B' if b else 'neither lora_A nor lora_B'} but not both")
            continue
        if len(a.shape) != 2 or len(b.shape) != 2 or not a.numel or not b.numel:
            problems.append(f"{mod}: lora_A {list(a.shape)} / lora_B {list(b.shape)} are not non-empty matrices")
            continue
        if a.shape[0] != r or b.shape[1] != r:
            problems.append(f"{mod}: lora_A {list(a.shape)}, lora_B {list(b.shape)}, but adapter_config.json says r={r}")
        if isinstance(targets, (str, list)) and targets != "all-linear" and not targets_module(targets, mod):
            problems.append(f"{mod}: not selected by target_modules {targets!r}")
        if use_dora and "magnitude" not in entry:
            problems.append(f"{mod}: use_dora is set but the module has no lora_magnitude_vector")
        if not use_dora and "magnitude" in entry:
            problems.append(f"{mod}: holds a lora_magnitude_vector but use_dora is false")
    if not ad.modules:
        problems.append("no lora_A / lora_B pair at all after the repair")
    return problems


def _checks(config: dict[str, Any], tensors: list[TensorInfo], repairs: dict[str, str]) -> list[str]:
    modules = {n.removeprefix(KEY_PREFIX).rsplit(".lora_", 1)[0] for n in repairs.values()}
    r = config.get("r", 8)
    pattern = config.get("rank_pattern") or {}
    rank = f"r={r}" + (f" or its rank_pattern ({len(pattern)} entries)" if pattern else "")
    checks = [
        f"{len(repairs)} damaged key(s) of {len(modules)} module(s) restored to PEFT's '.lora_' names",
        f"every LoRA module has lora_A and lora_B of the rank adapter_config.json gives it ({rank})",
        "every LoRA module is selected by target_modules",
    ]
    if config.get("use_dora"):
        checks.append("every DoRA module has its lora_magnitude_vector")
    return checks
