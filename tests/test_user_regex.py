"""User regexes (PEFT ``target_modules`` / ``rank_pattern`` / ``alpha_pattern``) are evaluated with the
``regex`` engine for its timeout: its answers must equal ``re``'s (what PEFT uses) for every pattern
that terminates."""

from __future__ import annotations

import re

from ckpt_tool_peft.detect import pattern_key, pattern_value, targets_module, user_regex_match
from hypothesis import given, settings
from hypothesis import strategies as st

MODULES = [
    "model.layers.0.self_attn.q_proj", "model.layers.11.self_attn.v_proj", "model.layers.3.mlp.down_proj",
    "transformer.h.0.attn.c_attn", "lm_head", "model.embed_tokens", "a.b", "q_proj", "model.layers.10.mlp.up_proj",
    "aaa.ab", "", "x.y.z_proj", "model.Layers.0.Q_PROJ", "décodeur.couche.0",
]

_ATOMS = st.sampled_from([
    "q_proj", "v_proj", "proj", "a", "b", r"\.", ".", r"\d", r"\d+", r"\w+", "[0-9]", "[a-z_]+", "[^.]+", "layers",
    "mlp", "self_attn", "model", "^", "$", r"\b", "0", "1", "11", "(?i:q_PROJ)", "é", "h",
])


def _combine(parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(parts, parts).map("".join),
        st.tuples(parts, parts).map(lambda p: f"{p[0]}|{p[1]}"),
        parts.map(lambda p: f"({p})"),
        parts.map(lambda p: f"(?:{p})"),
        st.tuples(parts, st.sampled_from(["?", "*", "+", "{1,2}", "*?", "+?", "{2}"])).map(lambda p: f"(?:{p[0]}){p[1]}"),
        parts.map(lambda p: f".*{p}"),
        parts.map(lambda p: f"(?=.*{p})"),
        parts.map(lambda p: f"(?!{p})"),
    )


PATTERNS = st.recursive(_ATOMS, _combine, max_leaves=6)


@settings(max_examples=400, deadline=None, database=None)
@given(pattern=PATTERNS)
def test_regex_engine_agrees_with_re(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error:
        return
    for module in MODULES:
        peft_rank = re.match(rf"(.*\.)?({pattern})$", module) is not None  # PEFT get_pattern_key
        assert user_regex_match(rf"(.*\.)?({pattern})$", module, full=False, field_="rank_pattern") == peft_rank
        assert targets_module(pattern, module) == (re.fullmatch(pattern, module) is not None), (pattern, module)


def test_peft_pattern_semantics() -> None:
    patterns = {"q_proj": 4, r"layers\.1\d\..*": 8, "model.layers.0.self_attn.q_proj": 16}
    assert pattern_key(patterns, "model.layers.0.self_attn.q_proj") == "q_proj"
    assert pattern_value(patterns, "model.layers.11.self_attn.v_proj", 2) == 8
    assert pattern_value(patterns, "model.layers.3.mlp.down_proj", 2) == 2
    assert targets_module(["q_proj", "v_proj"], "model.layers.0.self_attn.q_proj")
    assert not targets_module(".*q", "model.layers.0.self_attn.q_proj")


def test_slow_pattern_budget(monkeypatch) -> None:
    """A pattern just under the per-match limit is stopped by the per-pattern total."""
    import pytest
    from ckpt_tool_peft import detect

    from ckpt_tool.errors import InvalidFile

    monkeypatch.setattr(detect, "MAX_REGEX_TOTAL_SECONDS", 0.05)
    monkeypatch.setattr(detect, "_REGEX_SPENT", {})
    with pytest.raises(InvalidFile, match="in total"):
        for i in range(1000):  # ~3 ms each: far from the 50 ms per-match limit
            detect.user_regex_match("(a|a)+$", "a" * 13 + f"b{i}", full=False, field_="rank_pattern")
