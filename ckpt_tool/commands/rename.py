"""``ckpt-tool rename``: new tensor names (same bytes), a PEFT adapter's new name, repaired keys or file names."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ckpt_tool import render

#: Human output fits this many columns; longer names are folded (after a '.', where possible).
WIDTH = 80
INDENT = ""
ARROW = " \u2192 "


def fold(text: str, width: int) -> list[str]:
    """``text`` cut into lines of at most ``width`` characters, preferably just after a ``.`` (else a ``_``);
    continuation lines start with two spaces (and so hold two characters less)."""
    width = max(width, 8)
    lines: list[str] = []
    room = width
    while len(text) > room:
        cut = text.rfind(".", 0, room) + 1
        if cut < room // 2:
            cut = text.rfind("_", 0, room) + 1
        if cut < room // 2:
            cut = room
        lines.append(text[:cut])
        text = text[cut:]
        room = width - 2
    lines.append(text)
    return [lines[0]] + ["  " + line for line in lines[1:]]


def wrap(text: str, indent: str = "") -> list[str]:
    """Prose folded at spaces within ``WIDTH`` (continuation lines indented two more); paths are never cut."""
    import textwrap

    lines = textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ", break_long_words=False, break_on_hyphens=False
    )
    return lines or [indent]


def change_table(changes: Sequence[dict[str, str]], width: int = WIDTH) -> str:
    """``old → new`` as two columns within ``width`` columns, long names folded."""
    if not changes:
        return ""
    avail = width - len(INDENT) - len(ARROW)
    max_old = max(3, *(len(c["old"]) for c in changes))
    max_new = max(3, *(len(c["new"]) for c in changes))
    if max_old + max_new <= avail:
        w_old, w_new = max_old, max_new
    else:
        w_old = min(max_old, max(avail // 2, avail - max_new))
        w_new = avail - w_old
    out = [INDENT + "old".ljust(w_old) + "   " + "new", INDENT + "-" * w_old + "   " + "-" * min(w_new, max_new)]
    for c in changes:
        left, right = fold(c["old"], w_old), fold(c["new"], w_new)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            sep = ARROW if i == 0 else "   "
            out.append((INDENT + a.ljust(w_old) + sep + b).rstrip())
    return "\n".join(out)


def _rel(path: str, root: str) -> str:
    """``path`` relative to ``root`` for display, a temp folder's long name shown as ``<temp>``."""
    from ckpt_tool.io.atomic import TEMP_PREFIX

    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        rel = path
    if rel.startswith(".."):
        rel = path
    return "/".join("<temp>" if part.startswith(TEMP_PREFIX) else part for part in rel.split("/"))


def _keys_human(s: dict[str, Any]) -> str:
    t = s.get("tensors", {})
    dry = s.get("dry_run")
    repair = s.get("operation") == "repair"
    what = f"{s.get('source_format')} {s.get('kind')}"
    if repair:
        what = f"PEFT adapter '{s.get('adapter')}'"
    where = " (in place)" if s.get("in_place") and not dry else ""
    if repair and not s.get("changes"):
        lines = [f"nothing to repair in {what} {s['source']}: no damaged key found; nothing written"]
    elif repair:
        verb = "would repair" if dry else "repaired"
        lines = [f"{verb} {t.get('renamed', 0)} damaged keys (of {t.get('written', 0)} tensors) of {what} in {s['source']}{where}"]
    else:
        verb = "would rename" if dry else "renamed"
        lines = [f"{verb} {t.get('renamed', 0)} of {t.get('written', 0)} tensors of {what} {s['source']}{where}"]
    lines = [line for head in lines for line in wrap(head)]
    if dry:
        lines.append("  dry run: nothing written")
    if dry and s.get("changes"):
        lines.append(change_table(s["changes"]))
    elif s.get("changes"):
        size = render.human_bytes(t.get("bytes", 0))
        lines.extend(
            wrap(
                f"{t.get('written', 0)} tensors, {size}: {t.get('copied', 0)} copied unchanged, "
                f"{t.get('cast', 0)} cast, {t.get('computed', 0)} computed ({s.get('seconds', 0):.2f}s)",
                "  ",
            )
        )
    for check in s.get("checks", []):
        lines.extend(wrap(f"checked: {check}", "  "))
    verb = "would write" if dry else "wrote"
    lines.extend(f"  {verb} {p}" for p in s.get("outputs", []))
    for note in s.get("notes", []):
        if repair and note.startswith("nothing to repair"):
            continue
        lines.extend(wrap(f"note: {note}", "  "))
    return "\n".join(lines)


def _adapter_human(s: dict[str, Any]) -> str:
    dry = s.get("dry_run")
    verb = "would rename" if dry else "renamed"
    head = f"{verb} adapter '{s['adapter']}' to '{s['to']}' in {s.get('root') or s['source']}"
    if s.get("resumed"):
        head += " (finishing an interrupted rename)"
    lines = wrap(head)
    if dry:
        lines.append("  dry run: nothing changed")
    root = s.get("root") or ""
    for step in s.get("steps", []):
        done = step.get("done", step["op"])
        text = f"  {done:<8} {_rel(step['path'], root)}"
        if step.get("to"):
            text += f" -> {_rel(step['to'], root)}"
        lines.append(text)
    for note in s.get("notes", []):
        lines.extend(wrap(f"note: {note}", "  "))
    return "\n".join(lines)


def _files_human(s: dict[str, Any]) -> str:
    """A file repair or its undo: one line per step (ROOT-relative paths), the notes, what to do next."""
    dry, undo = s.get("dry_run"), s.get("operation") == "undo"
    steps = s.get("steps", [])
    if undo:
        head = f"undid the repair of {s['source']}: {len(steps)} step(s) reversed"
    elif not steps:
        head = f"nothing to repair in {s['source']}"
    else:
        verb = "would repair" if dry else "repaired"
        moved = [f"{x['from']} -> {x['to']}" for x in steps if x["action"] == "move"]
        head = f"{verb} {s['source']}: {', '.join(moved) or 'companion files'}"
        if s.get("resumed"):
            head += " (finishing an interrupted repair)"
    lines = wrap(head)
    if dry:
        lines.append("  dry run: nothing changed")
    for x in steps:
        done = x["status"] if x["status"] in ("done", "undone") else x["action"]
        text = f"  {done:<8} {x['from'] or x['to']}" + (f" -> {x['to']}" if x["from"] and x["to"] else "")
        lines.append(text)
        if x.get("reason") and not undo:
            lines.extend(wrap(x["reason"], "             "))
    for item in s.get("left", []):
        lines.extend(wrap(f"note: {item['path']}: {item['reason']}", "  "))
    for note in s.get("notes", []):
        lines.extend(wrap(f"note: {note}", "  "))
    if steps and not dry and not undo:
        lines.extend(wrap(f"journaled in {s['source']}; 'ckpt-tool rename {s['source']} --undo' reverses it", "  "))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("rename", no_args_is_help=True)
    def rename_cmd(
        path: Annotated[Path, typer.Argument(metavar="PATH", help="A safetensors or torch file, a sharded Hugging Face directory, a PEFT adapter directory, or a LitGPT checkpoint folder (--repair, --undo).")],
        maps: Annotated[list[str] | None, typer.Option("--map", metavar="OLD=NEW", help="Rename one tensor (exact name; repeatable).")] = None,
        regexes: Annotated[list[str] | None, typer.Option("--regex", metavar="PATTERN=REPLACEMENT", help="Rename every name the Python regex matches as a whole (re.fullmatch; \\1, \\g<name> in the replacement; repeatable, applied in order).")] = None,
        strip_prefix: Annotated[str | None, typer.Option("--strip-prefix", metavar="P", help="Remove P from the start of the names that have it.")] = None,
        add_prefix: Annotated[str | None, typer.Option("--add-prefix", metavar="P", help="Put P in front of every name (applied last).")] = None,
        map_file: Annotated[Path | None, typer.Option("--map-file", metavar="F", help="Exact renames from a JSON object {\"old\": \"new\"} or lines OLD=NEW (applied first).")] = None,
        adapter: Annotated[str | None, typer.Option("--adapter", metavar="NAME", help="PEFT: the adapter to work on; with --to, the adapter to rename.")] = None,
        to: Annotated[str | None, typer.Option("--to", metavar="NEW", help="PEFT: the adapter's new name (renames its folder; 'default' is the root).")] = None,
        do_repair: Annotated[bool, typer.Option("--repair", help="PEFT: restore keys damaged by PEFT <= 0.17 (adapter named 'lora'); in place unless --out. LitGPT: rename a LoRA-only lit_model.pth to lit_model.pth.lora (journaled in its folder; see --undo).")] = False,
        do_undo: Annotated[bool, typer.Option("--undo", help="LitGPT: reverse the file repair journaled in PATH's folder (all or nothing).")] = False,
        out: Annotated[Path | None, typer.Option("--out", help="Write the renamed checkpoint here (a file for a file input, a directory for a directory).")] = None,
        in_place: Annotated[bool, typer.Option("--in-place", help="Replace the input file(s) atomically (temp files beside them, renamed over them, index last).")] = False,
        force: Annotated[bool, typer.Option("--force", help="Overwrite existing --out files.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and print the changes (old -> new); write nothing.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
    ) -> None:
        """Rename tensors without touching their bytes, rename a PEFT adapter, or repair damaged PEFT keys.

        Rules apply in this order: --map-file and --map (exact), --strip-prefix, each --regex, --add-prefix.
        A rule that matches nothing, or two tensors ending with one name, is refused and nothing is written.
        Files keep their layout: the same shards (index rewritten, total_size unchanged), safetensors
        metadata and torch wrapper.
        """
        from ckpt_tool.ops.rename import rename

        summary = rename(
            path,
            maps=maps or (),
            regexes=regexes or (),
            strip_prefix=strip_prefix,
            add_prefix=add_prefix,
            map_file=map_file,
            adapter=adapter,
            to=to,
            do_repair=do_repair,
            do_undo=do_undo,
            out=out,
            in_place=in_place,
            force=force,
            dry_run=dry_run,
            progress=not render.is_quiet() and not json_out,
        )
        if json_out:
            render.emit_json(summary)
        elif summary.get("operation") == "adapter":
            render.out(_adapter_human(summary))
        elif summary.get("operation") in ("repair-files", "undo"):
            render.out(_files_human(summary))
        else:
            render.out(_keys_human(summary))
