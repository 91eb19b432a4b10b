"""Human tables (tabulate) and JSON. Data goes to stdout; messages go to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from ckpt_tool.model import DTYPE_NAMES, CheckpointInfo


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


_quiet = [False]
_json = {"wanted": False, "emitted": False}


def set_quiet(value: bool) -> None:
    """``--quiet``: no human output (tables, summaries, messages, progress); JSON and errors still print."""
    _quiet[0] = value


def is_quiet() -> bool:
    return _quiet[0]


def emit_json(data: Any) -> None:
    """The one JSON document a ``--json`` run prints on stdout (``--quiet`` does not hide asked-for data)."""
    _json["emitted"] = True
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def expect_json(wanted: bool) -> None:
    """``cli.main``: this run has ``--json``, so a failure must still print one JSON document (``emit_error``)."""
    _json.update(wanted=wanted, emitted=False)


def emit_error(error: dict[str, Any]) -> None:
    """On a ``--json`` run that failed before printing its document: ``{"error": {message, hint, exit_code}}``.

    A command that already printed its document (migrate puts the error in it) prints nothing more.
    """
    if _json["wanted"] and not _json["emitted"]:
        emit_json({"error": error})


def out(text: str) -> None:
    """Human output on stdout (tables, summaries), unless ``--quiet``."""
    if not _quiet[0]:
        sys.stdout.write(text + "\n")


def message(text: str) -> None:
    """A message on stderr (warnings, notes), unless ``--quiet``."""
    if not _quiet[0]:
        sys.stderr.write(text + "\n")


def table(rows: list[list[Any]], headers: list[str] | None = None) -> str:
    from tabulate import tabulate  # ~30 ms to import: only when a table is printed, not for --json

    if headers:
        return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    return tabulate(rows, tablefmt="plain", disable_numparse=True)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders numeric parts as numbers: ``h.2`` before ``h.10``."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _lora_line(lora: dict[str, Any]) -> str:
    def known(value: Any) -> Any:
        return "unknown" if value is None else value

    assumed = " (assumed)" if "alpha" in (lora.get("assumed") or []) else ""
    parts = [f"r={known(lora.get('r'))}", f"alpha={known(lora.get('alpha'))}{assumed}"]
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if lora.get(flag):
            parts.append(flag.removeprefix("use_"))
    return ", ".join(parts)


def _summary_rows(info: CheckpointInfo) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["path", info.path],
        ["format", info.format + (f" ({info.description})" if info.description else "")],
        ["kind", info.kind + (" + optimizer state" if info.training_state else "")],
    ]
    if info.adapter_type:
        rows.append(["adapter type", info.adapter_type])
    if info.lora:
        rows.append(["lora", _lora_line(info.lora)])
        targets = info.lora.get("targets")
        if targets:
            rows.append(["targets", targets if isinstance(targets, str) else ", ".join(map(str, targets))])
    for ad in info.adapters if len(info.adapters) > 1 else []:
        rows.append([f"adapter '{ad.name}'", f"{ad.adapter_type}, {ad.tensors} tensors" + (f", {_lora_line(ad.lora)}" if ad.lora else "")])
    flt = info.metadata.get("filter")
    scope = f" (filtered: {flt['matched']} of {flt['of']} tensors match {flt['pattern']!r})" if flt else ""
    rows.append(["parameters", f"{human_count(info.parameters)} ({info.parameters:,}){scope}"])
    for dtype, n in info.dtypes().items():
        rows.append([f"  {dtype}", f"{human_count(n)} ({n:,})"])
    rows.append(["tensors", str(len(info.tensors))])
    rows.append(["bytes", f"{human_bytes(info.nbytes)} ({info.nbytes:,})"])
    if info.container:
        rows.append(["container", info.container + (f", {info.wrapper} dict" if info.wrapper else "")])
    if len(info.files) > 1:
        rows.append(["files", f"{len(info.files)} ({', '.join(_short(f) for f in info.files[:4])}{', …' if len(info.files) > 4 else ''})"])
    elif info.files:
        rows.append(["file", _short(info.files[0])])
    if info.provenance:
        from ckpt_tool.io.provenance import summary_lines

        for i, line in enumerate(summary_lines(info.provenance)):
            rows.append(["provenance" if i == 0 else "", line])
    for key, value in info.metadata.items():
        if key == "filter" or value in (None, "", [], {}):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > 100:
            text = text[:97] + "..."
        rows.append([key, text])
    return rows


def _short(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def render_inspect(info: CheckpointInfo, with_tensors: bool) -> str:
    out = [table(_summary_rows(info))]
    for comp in info.companions:
        out.append("\nalso here:\n" + table(_summary_rows(comp)))
    if with_tensors:
        ordered = sorted(info.tensors, key=lambda t: natural_key(t.name))
        rows = [[t.name, DTYPE_NAMES.get(t.dtype, t.dtype), "×".join(map(str, t.shape)) or "scalar", f"{t.numel:,}"] for t in ordered]
        out.append("\n" + table(rows, ["name", "dtype", "shape", "params"]))
    warnings = list(info.warnings) + [w for c in info.companions for w in c.warnings]
    if warnings:
        out.append("\nwarnings:")
        out.extend(f"  - {w}" for w in warnings)
    return "\n".join(out)
