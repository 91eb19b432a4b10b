"""LitGPT run directories from every era → today's ``final/`` / ``step-N/`` layout (formats.md §2.2).

This module only *proposes* actions; the core (``ckpt_tool.ops.migrate``)
checks the whole plan and applies it. What a weights file holds is decided
from its keys (``probe.container`` reads the pickle's names, never the tensor
bytes, never torch), because the same file name has meant LoRA-only, adapter
or full weights depending on the release. A file whose name looks right but
whose keys are not LitGPT's (lit-llama used the same ``iter-N-ckpt.pth``
names) is reported, not moved.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

from ckpt_tool.errors import CkptError, InvalidFile, Refused
from ckpt_tool.ops.migrate import COPY, DERIVE, MOVE, REPORT, RMDIR, WRITE, Action, MigrateOptions
from ckpt_tool_lit.config import (
    HYPERPARAMETERS,
    LEGACY_CONFIG,
    MODEL_CONFIG,
    layer_count,
    read_json_mapping,
    read_yaml_mapping,
)
from ckpt_tool_lit.geometry import Geometry
from ckpt_tool_lit.keys import (
    ADAPTER,
    ADAPTER_V2,
    FULL,
    LORA,
    UNKNOWN,
    WEIGHTS_NAME,
    classify,
    lora_modules,
    module_kind,
)

# 2023 names in the run dir → today's final/ (expected kind; the keys decide)
FINAL_FILES = {
    "lit_model_lora_finetuned.pth": LORA,
    "lit_model_adapter_finetuned.pth": ADAPTER,
    "lit_model_finetuned.pth": FULL,
}
ITER_FILE_RE = re.compile(r"^(iter|step)-(\d+)(-ckpt)?\.pth$")
ITER_DIR_RE = re.compile(r"^iter-(\d+)$")
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
CKPT_DIR_RE = re.compile(r"^(final|(iter|step)-\d+)$")
LIT_LLAMA_NAME_RE = re.compile(r"^lit-llama.*\.pth$")
LIT_LLAMA_KEY_RE = re.compile(r"\.(c_attn|c_proj|c_fc1|c_fc2|rms_1|rms_2)\.|\.ln_f\.scale$")
# the fused attention before LitGPT 0.5.5 (formats.md §2.4); per-row tensors that follow its row layout
LEGACY_ATTN_RE = re.compile(r"^(.*\.attn)\.attn\.(weight|bias|adapter_bias|adapter_scale)$")
UPGRADE_ATTN = "ckpt_tool_lit.migrate:upgrade_attn_file"

CONFIG_YAML = MODEL_CONFIG
CONFIG_JSON = LEGACY_CONFIG
HPARAMS = HYPERPARAMETERS
MIGRATION_RECORD = "migration.json"
# Companions copied into every new checkpoint folder so it loads on its own.
COMPANIONS = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    HPARAMS,
    "prompt_style.yaml",
)
KNOWN_FILES = set(COMPANIONS) | {CONFIG_YAML, CONFIG_JSON, "config.json", MIGRATION_RECORD}
WEIGHT_NAMES = set(WEIGHTS_NAME.values())
LOGS_DIRS = {"logs", "lightning_logs"}

# formats.md §2.2: keys renamed before 2024-03-04
CONFIG_RENAMES = {
    "_norm_class": "norm_class_name",
    "_mlp_class": "mlp_class_name",
    "condense_ratio": "rope_condense_ratio",
}
LEGACY_CONFIG_KEYS = set(CONFIG_RENAMES) | {"org", "sliding_window_layer_placing"}
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10x faster on 2,000 runs


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


ADAPTER_AS_MODEL = "{name} (March 2024: adapter weights under the full-model name)"
MIGRATE_BY = "ckpt-tool migrate"
KIND_TEXT = {LORA: "LoRA", ADAPTER: "adapter", ADAPTER_V2: "adapter v2"}
REPAIR_BY = "ckpt-tool rename --repair"

# defaults of the 2023 lit-gpt finetune/lora.py scripts (alpha is not in the weights)
OLD_LORA_ALPHA = 16


@dataclass
class _Weights:
    src: Path
    dst_name: str
    kind: str
    reason: str
    r: int | None = None
    keys: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    legacy_attn: bool = False  # keys use attn.attn (before LitGPT 0.5.5)
    derive: bool = False  # --upgrade-attn: write a converted copy, keep this file


@dataclass
class _Target:
    folder: Path
    src_folder: Path  # where the legacy weights and their companions live now
    weights: list[_Weights] = field(default_factory=list)
    moves_folder: bool = False  # March 2024 iter-N/ folder: companions move along
    config_only: bool = False  # today's names, but only lit_config.json


def _entries(
    d: Path,
) -> tuple[dict[str, os.DirEntry[str]], dict[str, os.DirEntry[str]], dict[str, os.DirEntry[str]]]:
    files, dirs, links = {}, {}, {}
    for e in os.scandir(d):
        if e.is_symlink():
            links[e.name] = e
        elif e.is_dir(follow_symlinks=False):
            dirs[e.name] = e
        elif e.is_file(follow_symlinks=False):
            files[e.name] = e
    return files, dirs, links


def _is_regular(p: Path) -> bool:
    return p.is_file() and not p.is_symlink()


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def _classify(
    path: Path, probe: Any, expected: str | None, origin: str, options: MigrateOptions, report: Any
) -> _Weights | None:
    """Classify ``path`` by its keys; ``report(path, why)`` and return None when it is not LitGPT weights."""
    try:
        c = probe.container(path)
    except CkptError as exc:
        report(path, f"cannot read ({exc.message}); left in place")
        return None
    keys = list(c.tensors)
    if any(LIT_LLAMA_KEY_RE.search(k) for k in keys):
        report(path, "lit-llama weights (another project); not moved")
        return None
    kind = classify(keys)
    if kind == UNKNOWN:
        report(path, "not a LitGPT state dict; left in place")
        return None
    why = f"{origin}; keys say {kind}"
    if expected and kind != expected and not (expected == ADAPTER and kind == ADAPTER_V2):
        why += f" (the name suggested {expected})"
    if c.training_state:
        why += ", with optimizer state"
    w = _Weights(
        path, WEIGHTS_NAME[kind], kind, why, keys=keys, shapes={k: t.shape for k, t in c.tensors.items()}
    )
    w.legacy_attn = any(".attn.attn." in k for k in keys)
    if w.legacy_attn:
        if not options.upgrade_attn:
            w.reason += "; legacy fused attn.attn keys" + (
                " (--upgrade-attn writes a converted copy)"
                if kind in (FULL, ADAPTER_V2) and not c.training_state
                else ""
            )
        elif kind not in (FULL, ADAPTER_V2):
            w.reason += "; legacy attn.attn keys kept: converting LoRA needs the release that trained it (formats.md §2.4)"
        elif c.training_state:
            w.reason += (
                "; legacy attn.attn keys kept: the optimizer state would need the same permutation"
            )
        else:
            w.derive = True
    return w


def propose(run_dir: Path, root: Path, probe: Any, options: MigrateOptions) -> list[Action] | None:
    """The actions that migrate ``run_dir``, ``[]`` if it is LitGPT's and current, ``None`` if not LitGPT's."""
    rel_parts = run_dir.relative_to(root).parts if run_dir != root else ()
    if rel_parts and (CKPT_DIR_RE.match(run_dir.name) or LOGS_DIRS & set(rel_parts)):
        # a checkpoint folder or logs of a run: the run directory's own call plans them
        return []
    try:
        files, dirs, links = _entries(run_dir)
    except OSError:
        return None

    actions: list[Action] = []
    targets: dict[str, _Target] = {}
    handled: set[str] = set()
    lit = False

    def report(path: Path, why: str) -> None:
        actions.append(Action(REPORT, src=path, reason=why))

    def weights(path: Path, expected: str | None, origin: str) -> _Weights | None:
        return _classify(path, probe, expected, origin, options, report)

    def target(folder: Path, src_folder: Path, **kw: Any) -> _Target:
        t = targets.get(folder.name)
        if t is None:
            t = targets[folder.name] = _Target(folder, src_folder, **kw)
        return t

    # 1. files in the run dir: 2023 final names, iter-/step- intermediates, lit-llama files
    for name in sorted(files):
        path = run_dir / name
        if name in FINAL_FILES:
            lit = True
            w = weights(path, FINAL_FILES[name], f"{name} (2023 name of the final weights)")
            if w:
                target(run_dir / "final", run_dir).weights.append(w)
            handled.add(name)
        elif m := ITER_FILE_RE.match(name):
            w = weights(
                path,
                None,
                f"{name}: number {m[2]} kept"
                + (" (it counted micro-batch iterations, not optimizer steps)" if m[1] == "iter" else "")
                + f"; original name recorded in {MIGRATION_RECORD}",
            )
            handled.add(name)
            if w:
                lit = True
                target(run_dir / f"step-{m[2]}", run_dir).weights.append(w)
        elif LIT_LLAMA_NAME_RE.match(name):
            report(path, "lit-llama file (another project); not moved")
            handled.add(name)

    # 2. checkpoint folders: March 2024 iter-N/ folders, adapter-only final/lit_model.pth, lit_config.json only
    for name in sorted(dirs):
        folder = run_dir / name
        if m := ITER_DIR_RE.match(name):
            src = folder / "lit_model.pth"
            if _is_regular(src):
                lit = True
                w = weights(
                    src,
                    None,
                    f"{name}/lit_model.pth (March 2024 folder form): number {m[1]} kept, original name recorded in {MIGRATION_RECORD}",
                )
                if w:
                    target(run_dir / f"step-{m[1]}", folder, moves_folder=True).weights.append(w)
        elif name == "final" or STEP_DIR_RE.match(name):
            lit = True
            src = folder / "lit_model.pth"
            if _is_regular(src):
                w = weights(src, None, ADAPTER_AS_MODEL.format(name=f"{name}/lit_model.pth"))
                if w and w.kind != FULL:
                    target(folder, folder).weights.append(w)
            if not (folder / CONFIG_YAML).exists() and _is_regular(folder / CONFIG_JSON):
                current = [n for n in WEIGHT_NAMES if _is_regular(folder / n)]
                if current and folder.name not in targets:
                    t = target(folder, folder, config_only=True)
                    for n in current:
                        if n != "lit_model.pth.lora":
                            continue
                        w = weights(folder / n, None, "")
                        if w:
                            t.weights.append(
                                _Weights(w.src, w.dst_name, w.kind, "", keys=w.keys, shapes=w.shapes)
                            )

    # a checkpoint folder that is a symlink (or a file) is never written through: its checkpoint stays put
    blocked = sorted(name for name in targets if name in links or name in files)
    for name in blocked:
        t = targets.pop(name)
        if name in links:
            dest = os.readlink(links[name].path)
            where = "outside ROOT" if not _inside(Path(links[name].path), root) else "inside ROOT"
            report(t.folder, f"symlink to {dest} ({where}); not followed, so nothing is migrated into {name}/")
        else:
            report(t.folder, f"a file named {name} is where the {name}/ checkpoint folder belongs; nothing moved")
        for w in t.weights:
            report(w.src, f"left in place: {name}/ is not a real directory")

    for t in targets.values():
        actions.extend(_target_actions(run_dir, t, report))

    if targets or any(a.op == REPORT for a in actions):
        # a legacy run: list what is left behind so nothing goes unmentioned
        if targets or blocked:
            for _name, e in sorted(links.items()):
                if _name in blocked:
                    continue
                dest = os.readlink(e.path)
                where = "outside ROOT" if not _inside(Path(e.path), root) else "inside ROOT"
                report(Path(e.path), f"symlink to {dest} ({where}); not followed, left as is")
            for name in sorted(files):
                if name not in handled and name not in KNOWN_FILES:
                    report(run_dir / name, "not recognised; left in place")
        return actions
    if lit or files.keys() & {CONFIG_JSON, CONFIG_YAML} or any(n in WEIGHT_NAMES for n in files):
        return []
    return None


def _target_actions(run_dir: Path, t: _Target, report: Any, by: str = MIGRATE_BY) -> list[Action]:
    """Moves, companions and records for one new (or fixed-up) checkpoint folder (``by``: the command, for
    the files it writes)."""
    out: list[Action] = []
    folder, group = t.folder, t.folder
    converted = _converted_earlier(folder)
    for w in list(t.weights):
        rel = str(w.src.relative_to(run_dir))
        if converted.get(w.dst_name) == rel:
            # an earlier --upgrade-attn run wrote the converted copy and kept this original on purpose
            report(w.src, f"original kept; its converted copy is {folder.name}/{w.dst_name}")
            t.weights.remove(w)
    if not t.weights and not t.config_only:
        return out
    present = {n for n in COMPANIONS + (CONFIG_YAML, CONFIG_JSON) if (folder / n).exists()}
    for w in t.weights:
        if t.config_only:
            continue
        params = _attn_params(_config_for(t, run_dir)) if w.derive else None
        if w.derive and params is None:
            w.derive = False
            w.reason += "; legacy attn.attn keys kept: no config with n_head/n_embd to convert them"
        if w.derive:
            out.append(
                Action(
                    DERIVE,
                    src=w.src,
                    dst=folder / w.dst_name,
                    reason=w.reason + "; attn.attn → attn.qkv rows regrouped into a new file, original kept",
                    group=group,
                    converter=UPGRADE_ATTN,
                    params=params,
                )
            )
        else:
            out.append(Action(MOVE, src=w.src, dst=folder / w.dst_name, reason=w.reason, group=group))
    if t.moves_folder:
        # the March 2024 iter-N/ folder becomes step-N/: its known files move with the weights
        files, dirs, links = _entries(t.src_folder)
        leftovers = any(w.derive for w in t.weights)  # a converted original stays in its folder
        for name in sorted(files):
            if name == "lit_model.pth":
                continue
            if name in KNOWN_FILES:
                out.append(
                    Action(
                        MOVE,
                        src=t.src_folder / name,
                        dst=folder / name,
                        reason=f"moves with {t.src_folder.name}/",
                        group=group,
                    )
                )
                present.add(name)
            else:
                leftovers = True
                report(t.src_folder / name, "not recognised; left in place")
        for name in sorted(dirs) + sorted(links):
            leftovers = True
            report(t.src_folder / name, "not recognised; left in place")
        if not leftovers:
            out.append(
                Action(
                    RMDIR,
                    src=t.src_folder,
                    reason=f"emptied: everything moved to {folder.name}/",
                    group=group,
                )
            )

    cfg: dict[str, Any] | None = None
    if CONFIG_YAML not in present:
        for base in dict.fromkeys([t.src_folder, run_dir]):
            yml, js = base / CONFIG_YAML, base / CONFIG_JSON
            if _is_regular(yml):
                cfg = _read_yaml(yml)
                if cfg is not None and LEGACY_CONFIG_KEYS & cfg.keys():
                    # 0.4.6–0.5.7 wrote sliding_window_layer_placing, which LitGPT now rejects
                    try:
                        cfg, changes = convert_config(cfg)
                    except ValueError as exc:
                        report(yml, f"cannot convert ({exc}); {folder.name}/ gets no {CONFIG_YAML}")
                        break
                    text = (
                        f"# converted from {os.path.relpath(yml, folder)} by {by}\n"
                        + dump_yaml(cfg)
                    )
                    out.append(
                        Action(
                            WRITE,
                            dst=folder / CONFIG_YAML,
                            data=text,
                            reason=f"from {yml.relative_to(run_dir)} ({', '.join(changes)})",
                            group=group,
                        )
                    )
                else:
                    out.append(
                        Action(
                            COPY,
                            src=yml,
                            dst=folder / CONFIG_YAML,
                            reason="model config of the run",
                            group=group,
                        )
                    )
                break
            if _is_regular(js):
                try:
                    cfg, changes = convert_config(read_json_mapping(js))
                except InvalidFile as exc:
                    report(js, f"cannot read it ({exc.message}); {folder.name}/ gets no {CONFIG_YAML}")
                    break
                except ValueError as exc:
                    report(js, f"cannot convert ({exc}); {folder.name}/ gets no {CONFIG_YAML}")
                    break
                text = f"# converted from {os.path.relpath(js, folder)} by {by}\n" + dump_yaml(
                    cfg
                )
                what = ", ".join(changes) if changes else "no keys renamed"
                out.append(
                    Action(
                        WRITE,
                        dst=folder / CONFIG_YAML,
                        data=text,
                        reason=f"from {js.relative_to(run_dir)} ({what})",
                        group=group,
                    )
                )
                break
        else:
            report(
                folder, f"no {CONFIG_YAML} or {CONFIG_JSON} in the run; {folder.name}/ will need one to load"
            )
    else:
        cfg = _read_yaml(folder / CONFIG_YAML) or _read_json(folder / CONFIG_JSON)

    for name in COMPANIONS:
        if name in present:
            continue
        src = run_dir / name
        if t.src_folder != run_dir and _is_regular(t.src_folder / name):
            src = t.src_folder / name
        if _is_regular(src):
            out.append(
                Action(COPY, src=src, dst=folder / name, reason="so the folder loads on its own", group=group)
            )
            present.add(name)
    if HPARAMS not in present:
        lora = [w for w in t.weights if w.kind == LORA]
        if lora:
            text, note = lora_hparams(lora[0], cfg, by)
            out.append(Action(WRITE, dst=folder / HPARAMS, data=text, reason=note, group=group))

    record: dict[str, Any] = {"migrated_by": by, "files": {}}
    for w in t.weights:
        if t.config_only:
            continue
        record["files"][w.dst_name] = {"from": str(w.src.relative_to(run_dir)), "kind": w.kind}
        if w.derive:
            record["files"][w.dst_name]["converted_from"] = str(w.src.relative_to(run_dir))
            record["files"][w.dst_name]["conversion"] = (
                "legacy fused attention attn.attn (rows interleaved per query group) -> attn.qkv (grouped q|k|v); "
                "the original file was kept unchanged"
            )
    if any(
        ITER_FILE_RE.match(w.src.name)
        and w.src.name.startswith("iter-")
        or ITER_DIR_RE.match(w.src.parent.name)
        for w in t.weights
    ):
        record["note"] = (
            "iter-N counted micro-batch iterations, step-N counts optimizer steps: the number was kept, not converted"
        )
    if CONFIG_YAML not in present and any(a.op == WRITE and a.dst == folder / CONFIG_YAML for a in out):
        record["model_config.yaml"] = "converted from the run's legacy config (old key names)"
    if not (folder / MIGRATION_RECORD).exists():
        out.append(
            Action(
                WRITE,
                dst=folder / MIGRATION_RECORD,
                data=json.dumps(record, indent=2) + "\n",
                reason="records the original names",
                group=group,
            )
        )
    return out


def repair_folder(path: Path, probe: Any) -> Any:
    """``rename PATH --repair``: a folder whose ``lit_model.pth`` holds only adapter tensors, as migrate fixes it.

    PATH is that ``lit_model.pth`` or its folder; the folder is the journal's ROOT
    and nothing outside it is read or written. The actions are exactly migrate's
    for a March 2024 ``final/`` (``_target_actions``): the file is renamed to
    today's name (``lit_model.pth.lora``, ``.adapter``, ``.adapter_v2`` — the keys
    decide), a missing ``model_config.yaml`` is converted from ``lit_config.json``,
    a LoRA folder without ``hyperparameters.yaml`` gets one (r from the shapes,
    alpha assumed and marked), an existing one is left as it is (even without
    LoRA keys), and ``migration.json`` records the original name. Companion files
    in the parent run directory are not copied (``migrate`` on the run does that).

    Returns ``None`` when PATH is not a LitGPT weights folder, a ``FileRepair``
    with no actions when today's name is already in place, and raises
    ``Refused`` for a file that is not adapter-only (a full or merged model), a
    symlink, a folder where today's name already exists, or a March 2024
    ``iter-N/`` folder (migrate renames the folder too; half of that would strand it).
    """
    from ckpt_tool.ops.rename import FileRepair

    folder = path if path.is_dir() else path.parent  # a folder given as a symlink is followed (as migrate's ROOT)
    if not path.is_dir():
        if path.name not in WEIGHT_NAMES:
            return None
        if path.is_symlink():
            raise Refused(
                f"{path} is a symlink (to {os.readlink(path)}); rename --repair never follows or moves one",
                "run it on the folder that holds the real file",
            )
    src = folder / WEIGHTS_NAME[FULL]
    if src.is_symlink():
        raise Refused(
            f"{src} is a symlink (to {os.readlink(src)}); rename --repair never follows or moves one",
            "run it on the folder that holds the real file",
        )
    if ITER_DIR_RE.match(folder.name) and _is_regular(src):
        raise Refused(
            f"{folder} is a March 2024 intermediate folder (iter-N counted micro-batch iterations); renaming only "
            "its weights would leave it half migrated",
            f"run 'ckpt-tool migrate {folder.parent}' (it becomes step-N/ with the file renamed; --apply, --undo)",
        )
    if not _is_regular(src):
        current = [n for n in sorted(WEIGHT_NAMES) if _is_regular(folder / n)]
        return FileRepair(folder, [], [f"{current[0]} already has today's name; nothing to repair"]) if current else None
    reports: list[Action] = []

    def report(where: Path, why: str) -> None:
        reports.append(Action(REPORT, src=where, reason=why))

    probe.container(src)  # a damaged or hostile file fails here with its own error (exit 4), not as a refusal
    w = _classify(src, probe, None, ADAPTER_AS_MODEL.format(name=src.name), MigrateOptions(), report)
    if w is None:
        raise Refused(f"{src}: {reports[0].reason}", "rename --repair only renames LitGPT adapter weights")
    if w.kind == FULL:
        raise Refused(
            f"{src} holds a full model (base, full fine-tune or merged LoRA), not only adapter tensors; "
            "its name is right and nothing is renamed"
        )
    dst = folder / w.dst_name
    if os.path.lexists(dst):
        raise Refused(
            f"{src} holds only {KIND_TEXT.get(w.kind, w.kind)} tensors, but {dst.name} already exists beside it; "
            "it is never overwritten",
            f"compare the two files ('ckpt-tool diff {src} {dst}') and move away the one you do not need",
        )
    actions = _target_actions(folder, _Target(folder, folder, weights=[w]), report, by=REPAIR_BY)
    return FileRepair(folder, actions + reports)


def _converted_earlier(folder: Path) -> dict[str, str]:
    """``{weights name: source}`` for copies an earlier ``--upgrade-attn`` run wrote into ``folder``."""
    record = folder / MIGRATION_RECORD
    if not _is_regular(record):
        return {}
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return {
            k: v["converted_from"] for k, v in files.items() if isinstance(v, dict) and "converted_from" in v
        }
    except (OSError, ValueError, UnicodeDecodeError, TypeError):
        return {}


def _config_for(t: _Target, run_dir: Path) -> dict[str, Any] | None:
    """The model config that applies to a target: its own, its source folder's, or the run's."""
    for base in dict.fromkeys([t.folder, t.src_folder, run_dir]):
        cfg = _read_yaml(base / CONFIG_YAML) if _is_regular(base / CONFIG_YAML) else None
        if cfg is None and _is_regular(base / CONFIG_JSON):
            cfg = _read_json(base / CONFIG_JSON)
        if cfg is not None:
            return cfg
    return None


def _attn_params(cfg: dict[str, Any] | None) -> dict[str, int] | None:
    """The head geometry ``--upgrade-attn`` records in the plan (None: no usable config)."""
    geo = Geometry.maybe(cfg)
    return None if geo is None else {"n_head": geo.n_head, "n_query_groups": geo.n_query_groups, "head_size": geo.head_size}


def upgrade_attn_file(src: Path, out: Path, params: dict[str, Any]) -> None:
    """``--upgrade-attn``: write ``src`` with ``attn.attn`` renamed to ``attn.qkv`` and its rows regrouped.

    Called by the core at apply time (never while planning), with ``src``/``out`` naming descriptors migrate
    opened itself; migrate owns the temp file ``out``, its journal record, fsync and publish. The file is
    streamed through the engine (``upgrade_attn_plan``): one tensor in memory at a time, unchanged tensors
    copied file to file, never a whole-file ``torch.load``.
    """
    from ckpt_tool.ops.engine import write_into

    plan = upgrade_attn_plan(src, out, params)
    with open(out, "wb") as fh:  # our own description of migrate's temp file: positional writes from 0
        write_into(plan, fh)


def upgrade_attn_plan(src: Path, out: Path, params: dict[str, Any]) -> Any:
    """The ``TransformPlan`` of ``--upgrade-attn``: copy every tensor, regroup the rows of each ``attn.attn`` one.

    The result is what ``torch.save`` of the loaded file with the keys renamed and rows regrouped
    would hold, key for key and in order, with the ``{"model": ...}`` wrapper and its plain top-level
    entries (``iter_num``, ``step_count``...) kept. What the streaming writer cannot reproduce exactly
    is refused, never dropped: tensors outside the weights (optimizer or scheduler state), torch
    objects among the top-level entries, weights under another wrapper. The geometry comes from the
    journal, which is untrusted: it is checked as a model config would be, and every fused tensor's
    rows against it, before anything is written.
    """
    from ckpt_tool.io.container import read_container
    from ckpt_tool.io.writers import is_plain
    from ckpt_tool.model import CheckpointInfo
    from ckpt_tool.ops.transform import Out, Read, Sink, Step, TransformPlan, copy_step
    from ckpt_tool_lit import FORMAT

    geo = Geometry.from_config(
        {k: params.get(k) for k in ("n_head", "n_query_groups", "head_size")}, "the recorded attention geometry"
    )
    hint = "migrate it without --upgrade-attn (the file is then moved as it is)"
    c = read_container(src)
    tz = c.torch
    if tz is None:
        raise Refused(f"{src}: not a torch zip checkpoint, so not a legacy LitGPT file", hint)
    if tz.wrapper not in ("bare", "model"):
        raise Refused(f"{src}: the weights are not a bare state dict or under a 'model' key", hint)
    if tz.other_tensors:
        raise Refused(
            f"{src}: holds {tz.other_tensors} tensor(s) besides the weights (optimizer or scheduler state?), "
            "which would need the same row permutation",
            hint,
        )
    extras = {k: v for k, v in tz.obj.items() if k != "model"} if tz.wrapper == "model" else {}
    odd = [repr(k) for k, v in extras.items() if not (is_plain(k) and is_plain(v))]
    if odd:
        raise Refused(f"{src}: top-level entr{'y' if len(odd) == 1 else 'ies'} {', '.join(odd[:3])} hold torch "
                      "objects the converted copy could not reproduce exactly", hint)

    def regroup(tensors: Any, load: Any) -> list[Any]:
        return [geo.to_grouped(tensors[0])]

    steps: list[Step] = []
    for name, t in c.tensors.items():
        m = LEGACY_ATTN_RE.match(name)
        if m:
            if not t.shape or t.shape[0] != geo.qkv_rows:
                raise Refused(
                    f"{src}: {name} has shape {tuple(t.shape)}, the config implies {geo.qkv_rows} rows",
                    "check the run's model config",
                )
            new = f"{m[1]}.qkv.{m[2]}"
            steps.append(Step((Out("out", new, t.dtype, tuple(t.shape)),), (Read("in", name),), regroup, "rows regrouped"))
        elif ".attn.attn." in name:
            raise Refused(f"{src}: {name} cannot be converted by a row permutation", hint)
        else:
            steps.append(copy_step("in", name, "out", name, t.dtype, t.shape))
    info = CheckpointInfo(
        str(src), FORMAT, "model", container="torch", files=[str(src)], tensors=list(c.tensors.values())
    )
    options: dict[str, Any] = {}
    if tz.wrapper == "model":  # the top-level entries in their order, the state dict in its place
        options = {"wrapper": "model", "extras": {k: None if k == "model" else v for k, v in tz.obj.items()}}
    return TransformPlan({"in": info}, steps, {"out": Sink("torch", Path(out), options)})


def _read_yaml(path: Path) -> dict[str, Any] | None:
    """A model config through the plugin's safe reader (size cap, safe loader), or None if unusable."""
    try:
        return read_yaml_mapping(path)
    except InvalidFile:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A legacy ``lit_config.json`` with today's key names, or None if unreadable or unconvertible."""
    try:
        return convert_config(read_json_mapping(path))[0]
    except (InvalidFile, ValueError):
        return None


def convert_config(old: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Rename the keys of an old ``lit_config.json`` to today's ``model_config.yaml`` (formats.md §2.2).

    Returns the new mapping and a human list of what changed. Raises
    ``ValueError`` for a ``sliding_window_layer_placing`` it cannot map.
    """
    new: dict[str, Any] = {}
    changes: list[str] = []
    for key, value in old.items():
        if key in CONFIG_RENAMES:
            target = CONFIG_RENAMES[key]
            if target in old:
                changes.append(f"dropped {key} ({target} is set)")
                continue
            new[target] = value
            changes.append(f"{key}→{target}")
        elif key == "org":
            continue
        elif key == "sliding_window_layer_placing":
            try:
                n_layer = layer_count(old.get("n_layer"))  # bounded: the list below has n_layer entries
            except ValueError as exc:
                raise ValueError(f"sliding_window_layer_placing needs a plausible n_layer ({exc})") from None
            if value in (None, "all"):
                indices = [1] * n_layer
            elif value == "interleaved":
                indices = [1 if i % 2 == 0 else 0 for i in range(n_layer)]
            else:
                raise ValueError(f"unknown sliding_window_layer_placing {value!r}")
            if "sliding_window_indices" not in old:
                new["sliding_window_indices"] = indices
            changes.append(f"sliding_window_layer_placing={value!r}→sliding_window_indices")
        else:
            new[key] = value
    if "org" in old:
        hf = dict(old.get("hf_config") or {})
        hf.setdefault("org", old["org"])
        if "name" in old:
            hf.setdefault("name", old["name"])
        new["hf_config"] = hf
        changes.append("org/name→hf_config")
    return new, changes


def lora_hparams(w: _Weights, cfg: dict[str, Any] | None, by: str = MIGRATE_BY) -> tuple[str, str]:
    """A ``hyperparameters.yaml`` for a LoRA run that had none: r from the shapes, alpha assumed.

    Every assumed setting is also recorded machine-readably, in a ``# ckpt-tool-assumed: lora_alpha ...``
    line that ``inspect`` and ``merge`` read back (``ckpt_tool_lit.detect.assumed_values``), so the
    assumption stays visible after the migration. It is a comment, not a key: ``litgpt merge_lora``
    only reads ``lora_*`` / ``checkpoint_dir`` / ``precision`` and would accept a key, but
    ``litgpt finetune_lora --config hyperparameters.yaml`` rejects unknown keys.

    Returns (file text, the plan's reason naming every assumed value).
    """
    from ckpt_tool_lit.detect import ASSUMED_MARK
    from ckpt_tool_lit.geometry import Geometry

    modules = lora_modules(w.keys)
    ranks = {
        w.shapes[f"{m}.lora_B"][1]
        for m in modules
        if f"{m}.lora_B" in w.shapes and len(w.shapes[f"{m}.lora_B"]) == 2
    }
    r = min(ranks) if ranks else None
    assumed = [f"lora_alpha={OLD_LORA_ALPHA} (the old lit-gpt default; alpha is not stored in the weights)"]
    assumed_keys = ["lora_alpha"]
    flags = {
        "lora_query": False,
        "lora_key": False,
        "lora_value": False,
        "lora_projection": False,
        "lora_mlp": False,
        "lora_head": False,
    }
    for m in modules:
        kind = module_kind(m)
        if kind in ("projection", "mlp", "head"):
            flags[f"lora_{kind}"] = True
    qkv = [m for m in modules if module_kind(m) == "qkv"]
    if qkv and r:
        a_rows = w.shapes.get(f"{qkv[0]}.lora_A", (0,))[0]
        b_rows = w.shapes.get(f"{qkv[0]}.lora_B", (0,))[0]
        parts = max(1, a_rows // r)
        names = ("query", "key", "value")
        geometry = Geometry.maybe(cfg)
        sizes = dict(zip(names, geometry.qkv_sizes)) if geometry else None
        fits = [c for c in combinations(names, parts) if sizes is None or sum(sizes[n] for n in c) == b_rows]
        chosen: tuple[str, ...]
        if len(fits) == 1:
            chosen = fits[0]
        else:
            chosen = ("query", "value") if ("query", "value") in fits or not fits else fits[0]
            if parts < 3:
                assumed.append(
                    f"lora on {'+'.join(chosen)} (the shapes fit {len(fits) or 'no'} choices; q+v was the old default)"
                )
                assumed_keys += ["lora_query", "lora_key", "lora_value"]
        for n in chosen:
            flags[f"lora_{n}"] = True
    lines = [
        f"# Written by {by}: this LoRA run had no hyperparameters.yaml.",
        "# lora_r and the targets come from the tensor shapes.",
        *[f"# ASSUMED: {a}" for a in assumed],
        "# checkpoint_dir (the base model) is unknown: add it, or pass the base explicitly when merging.",
        "# The next line records the assumed keys for ckpt-tool inspect/merge; delete it once they are confirmed.",
        f"# {ASSUMED_MARK} {' '.join(assumed_keys)}",
    ]
    body = {"lora_r": r, "lora_alpha": OLD_LORA_ALPHA, **flags}
    text = "\n".join(lines) + "\n" + dump_yaml(body)
    reason = f"no {HPARAMS}: lora_r={r} from the shapes; ASSUMED " + "; ASSUMED ".join(assumed)
    return text, reason
