"""The rules of ``rename``: exact maps, prefixes and regular expressions, applied in a fixed order.

Order, for every name: the exact map (``--map-file`` entries, then ``--map``,
looked up once on the original name, so swaps work), ``--strip-prefix``, each
``--regex`` in the order given, ``--add-prefix``. Every rule must match at least
one name; the result must give every tensor its own, writable name.

Regular expressions must match the **whole** name (``re.fullmatch``); the
replacement is a Python template (``\\1``, ``\\g<name>``). Patterns are compiled in
``compile_regex`` and evaluated in ``regex_rename`` and nowhere else, so a
time-bounded engine can replace ``re`` in these two functions; until then the
pattern length and the length of the names a pattern is run against are bounded.

``--map-file`` is hostile input: size-capped, duplicate names and non-string
values refused with the line (or key) that holds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ckpt_tool.errors import InvalidFile, NotFound, Refused, UsageError

#: ``--map-file``: larger files are refused (a map for a 1T-parameter model is a few MB).
MAX_MAP_FILE_BYTES = 64 << 20
#: ``--regex``: longest pattern accepted (characters).
MAX_PATTERN_CHARS = 1000
#: Names longer than this are never handed to a regular expression (``re`` backtracks; this bounds the cost).
MAX_REGEX_NAME_CHARS = 1024
#: A new tensor name may not be longer than this (characters).
MAX_NAME_CHARS = 4096
#: Problems listed in one error, at most.
SHOWN = 8


# --- regular expressions: the one place where patterns are compiled and run ---------------------------


def compile_regex(text: str) -> re.Pattern[str]:
    """Compile a ``--regex`` pattern (bounded length; a syntax error is a usage error)."""
    if len(text) > MAX_PATTERN_CHARS:
        raise UsageError(f"--regex pattern of {len(text)} characters is longer than {MAX_PATTERN_CHARS}")
    try:
        return re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise UsageError(f"--regex pattern {text!r} is not a valid regular expression ({exc})") from None


def check_template(pattern: re.Pattern[str], replacement: str) -> None:
    """Refuse a replacement that refers to groups the pattern lacks, or ends in a lone backslash."""
    try:
        pattern.sub(replacement, "")  # parses the template without needing a match
    except (re.error, IndexError) as exc:
        raise UsageError(f"--regex replacement {replacement!r} is not valid for {pattern.pattern!r} ({exc})") from None


def regex_rename(pattern: re.Pattern[str], replacement: str, name: str) -> str | None:
    """The new name when ``pattern`` matches the whole of ``name``, else None.

    Raises ``Refused`` for a name longer than ``MAX_REGEX_NAME_CHARS``: ``re``
    has no time bound, so the input it sees is bounded instead.
    """
    if len(name) > MAX_REGEX_NAME_CHARS:
        raise Refused(
            f"tensor name of {len(name)} characters ({name[:60]!r}…) is longer than the {MAX_REGEX_NAME_CHARS} "
            "characters a --regex is run against",
            "rename it with --map or --map-file",
        )
    m = pattern.fullmatch(name)
    if m is None:
        return None
    try:
        return m.expand(replacement)
    except (re.error, IndexError) as exc:
        raise UsageError(f"--regex replacement {replacement!r}: {exc}") from None


# --- rules ---------------------------------------------------------------------------------------------


class Rule(Protocol):
    def apply(self, name: str) -> str | None: ...

    def unmatched(self) -> list[str]: ...


@dataclass
class MapRule:
    """Exact renames; ``sources`` says where each entry came from (``--map``, ``--map-file F:LINE``)."""

    mapping: dict[str, str]
    sources: dict[str, str] = field(default_factory=dict)
    hits: set[str] = field(default_factory=set)

    def apply(self, name: str) -> str | None:
        new = self.mapping.get(name)
        if new is not None:
            self.hits.add(name)
        return new

    def unmatched(self) -> list[str]:
        return [f"{self.sources.get(k, '--map')} {k}={v}" for k, v in self.mapping.items() if k not in self.hits]


@dataclass
class PrefixRule:
    kind: str  # "strip" | "add"
    prefix: str
    hits: int = 0

    def apply(self, name: str) -> str | None:
        if self.kind == "add":
            self.hits += 1
            return self.prefix + name
        if name.startswith(self.prefix):
            self.hits += 1
            return name[len(self.prefix) :]
        return None

    def unmatched(self) -> list[str]:
        return [] if self.hits else [f"--{self.kind}-prefix {self.prefix}"]


@dataclass
class RegexRule:
    text: str
    pattern: re.Pattern[str]
    replacement: str
    hits: int = 0

    def apply(self, name: str) -> str | None:
        new = regex_rename(self.pattern, self.replacement, name)
        if new is not None:
            self.hits += 1
        return new

    def unmatched(self) -> list[str]:
        return [] if self.hits else [f"--regex {self.text}"]


def _split(text: str, option: str) -> tuple[str, str]:
    """``OLD=NEW`` split at the last ``=`` (patterns may hold ``(?<=``; names never hold ``=`` in practice)."""
    old, sep, new = text.rpartition("=")
    if not sep or not old:
        raise UsageError(f"{option} {text!r}: expected OLD=NEW", f"e.g. {option} 'model.embed.weight=model.wte.weight'")
    return old, new


def read_map_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Parse ``--map-file``: a JSON object ``{"old": "new"}`` or lines ``OLD=NEW`` (``#`` comments, blank lines).

    Hostile input: the size is capped, duplicate keys and non-string values are
    refused with the line that holds them. Returns (mapping, where each entry was found).
    """
    from ckpt_tool.io.sidefiles import read_text

    if not path.exists():
        raise NotFound(f"{path}: no such map file", "check --map-file")
    text = read_text(path, "the map file", MAX_MAP_FILE_BYTES)
    mapping: dict[str, str] = {}
    sources: dict[str, str] = {}
    if text.lstrip()[:1] in ("{", "["):

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for k, v in items:
                if k in out:
                    raise InvalidFile(f"{path}: tensor {k!r} is mapped twice", "each name may appear once")
                out[k] = v
            return out

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except InvalidFile:
            raise
        except (ValueError, RecursionError) as exc:
            raise InvalidFile(f"{path}: the map file is not valid JSON ({exc})", "use {\"old\": \"new\", ...}") from None
        if not isinstance(data, dict):
            raise InvalidFile(f"{path}: the map file must be a JSON object of old -> new names")
        for k, v in data.items():
            if not isinstance(v, str):
                raise InvalidFile(f"{path}: the new name of {k!r} must be a string, not {type(v).__name__}")
            mapping[k] = v
            sources[k] = f"--map-file {path.name}"
        return mapping, sources
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        old, sep, new = line.rpartition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old:
            raise InvalidFile(f"{path}:{lineno}: expected OLD=NEW, found {line[:80]!r}")
        if old in mapping:
            raise InvalidFile(f"{path}:{lineno}: tensor {old!r} is mapped twice (first at {sources[old]})")
        mapping[old] = new
        sources[old] = f"{path.name}:{lineno}"
    return mapping, sources


def parse_rules(
    maps: Sequence[str] = (),
    regexes: Sequence[str] = (),
    strip_prefix: str | None = None,
    add_prefix: str | None = None,
    map_file: Path | None = None,
) -> list[Rule]:
    """The rules in application order. Raises ``UsageError`` for malformed options."""
    rules: list[Rule] = []
    mapping: dict[str, str] = {}
    sources: dict[str, str] = {}
    if map_file is not None:
        mapping, sources = read_map_file(map_file)
    for text in maps:
        old, new = _split(text, "--map")
        if old in mapping and mapping[old] != new:
            raise UsageError(
                f"--map {text!r} conflicts with {sources.get(old, '--map')} {old}={mapping[old]}",
                "map each name once",
            )
        mapping[old] = new
        sources.setdefault(old, "--map")
    if mapping or map_file is not None:
        rules.append(MapRule(mapping, sources))
    if strip_prefix is not None:
        if not strip_prefix:
            raise UsageError("--strip-prefix needs a non-empty prefix")
        rules.append(PrefixRule("strip", strip_prefix))
    for text in regexes:
        pat, repl = _split(text, "--regex")
        pattern = compile_regex(pat)
        check_template(pattern, repl)
        rules.append(RegexRule(text, pattern, repl))
    if add_prefix is not None:
        if not add_prefix:
            raise UsageError("--add-prefix needs a non-empty prefix")
        rules.append(PrefixRule("add", add_prefix))
    return rules


def apply_rules(names: Iterable[str], rules: Sequence[Rule]) -> dict[str, str]:
    """``{old: new}`` for every name the rules change; refuses rules that match nothing."""
    renames: dict[str, str] = {}
    for name in names:
        current = name
        for rule in rules:
            new = rule.apply(current)
            if new is not None:
                current = new
        if current != name:
            renames[name] = current
    unmatched = [u for rule in rules for u in rule.unmatched()]
    if unmatched:
        raise Refused(
            f"{len(unmatched)} rule(s) match no tensor name:\n" + "\n".join(f"  - {u}" for u in unmatched[:SHOWN])
            + (f"\n  … and {len(unmatched) - SHOWN} more" if len(unmatched) > SHOWN else ""),
            "check the names with 'ckpt-tool inspect PATH --tensors'; nothing was written",
        )
    return renames


def check_names(names: Sequence[str], renames: dict[str, str], container: str | None) -> None:
    """Refuse results that cannot be written or loaded: empty, huge or unencodable names, and collisions."""
    bad: list[str] = []
    for old, new in renames.items():
        why = None
        if not new:
            why = "is empty"
        elif len(new) > MAX_NAME_CHARS:
            why = f"is longer than {MAX_NAME_CHARS} characters"
        elif "\0" in new:
            why = "contains a NUL character"
        elif new == "__metadata__" and container in ("safetensors", "mixed"):
            why = "is reserved by safetensors for the file's metadata"
        else:
            try:
                new.encode("utf-8")
            except UnicodeEncodeError:
                why = "is not valid UTF-8 text"
        if why:
            bad.append(f"{old!r} -> {new[:80]!r} {why}")
    if bad:
        raise Refused(
            f"{len(bad)} new name(s) cannot be written:\n" + "\n".join(f"  - {b}" for b in bad[:SHOWN]),
            "change the rule; nothing was written",
        )
    final: dict[str, list[str]] = {}
    for name in names:
        final.setdefault(renames.get(name, name), []).append(name)
    clashes = {new: olds for new, olds in final.items() if len(olds) > 1}
    if clashes:
        lines = [f"  - {new!r} <- {', '.join(repr(o) for o in olds[:4])}" for new, olds in list(clashes.items())[:SHOWN]]
        raise Refused(
            f"{len(clashes)} new name(s) would be given to several tensors:\n" + "\n".join(lines)
            + (f"\n  … and {len(clashes) - SHOWN} more" if len(clashes) > SHOWN else ""),
            "two tensors cannot share a name; change the rules; nothing was written",
        )
