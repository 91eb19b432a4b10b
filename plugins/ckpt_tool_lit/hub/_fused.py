"""What the GPT-NeoX, Phi and Falcon hub families share: config checks, tensor maps and plan building.

A family describes a model as a list of ``Unit``\\ s: a group of LitGPT tensors
and the Hugging Face tensors they become, with the exact operation each way
(a copy, a row regrouping of a fused qkv, a split / concatenation of fused
projections, tied embeddings). ``plan`` turns the units into transform steps
for one direction and is the one place that checks the source tensors
against the config: every tensor the config calls for must be there with the
shape the config gives, and every tensor of the source must be taken by some
unit, so nothing is dropped without a word.

Config facts come from two sides: a LitGPT ``model_config.yaml`` (resolved
here exactly as ``litgpt.Config.__post_init__`` 0.5.13 resolves it, without
importing litgpt) and a ``config.json`` (written by transformers 4.x, with
``rope_theta`` / ``rope_scaling``, or 5.x, with ``rope_parameters``).

The compute functions are module-level (``functools.partial`` of them), never
change their inputs, and do exactly what LitGPT's converters do (``split``,
``torch.cat``, the qkv row permutation), so results are bit-identical.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile, Refused, Unsupported
from ckpt_tool.io.tensors import is_float
from ckpt_tool.model import TensorInfo
from ckpt_tool.ops.transform import Compute, Out, Read, Step
from ckpt_tool_lit.geometry import Geometry

if TYPE_CHECKING:
    import torch

# --- LitGPT model_config.yaml ------------------------------------------------------------------------

#: ``litgpt.Config`` fields and defaults, LitGPT 0.5.13. A config is read against these, so a
#: ``model_config.yaml`` that leaves a field out means what it means to LitGPT.
LIT_DEFAULTS: dict[str, Any] = {
    "name": "",
    "hf_config": {},
    "block_size": 4096,
    "n_layer": 16,
    "n_embd": 4096,
    "vocab_size": 50254,
    "padding_multiple": 512,
    "padded_vocab_size": None,
    "norm_class_name": "LayerNorm",
    "norm_eps": 1e-05,
    "norm_qk": False,
    "norm_qk_type": "default",
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "parallel_residual": True,
    "shared_attention_norm": False,
    "n_head": 32,
    "head_size": None,
    "n_query_groups": None,
    "attn_bias": False,
    "attention_scores_scalar": None,
    "sliding_window_size": None,
    "sliding_window_indices": None,
    "attention_logit_softcapping": None,
    "rope_base": 10000,
    "rotary_percentage": 0.25,
    "rope_condense_ratio": 1,
    "rope_adjustments": None,
    "rope_interleave": False,
    "intermediate_size": None,
    "moe_intermediate_size": None,
    "bias": True,
    "mlp_class_name": "GptNeoxMLP",
    "gelu_approximate": "none",
    "n_expert": 0,
    "n_shared_expert": None,
    "n_expert_groups": None,
    "n_topk_groups": None,
    "n_topk_scores_per_group": None,
    "n_expert_per_token": 0,
    "first_k_dense_replace": None,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "scale_embeddings": False,
    "lm_head_bias": False,
    "final_logit_softcapping": None,
    "norm_1": True,
    "norm_2": True,
    "latent_attention": None,
    "rope_local_base_freq": None,
    "rope_indices": None,
}

#: Features none of these families has in transformers: a config must have them off (LitGPT's defaults).
PLAIN: dict[str, Any] = {
    "norm_qk": False,
    "post_attention_norm": False,
    "post_mlp_norm": False,
    "attn_bias": False,
    "attention_scores_scalar": None,
    "attention_logit_softcapping": None,
    "rope_condense_ratio": 1,
    "rope_adjustments": None,
    "rope_interleave": False,
    "n_expert": 0,
    "scale_embeddings": False,
    "final_logit_softcapping": None,
    "norm_1": True,
    "norm_2": True,
    "latent_attention": None,
    "rope_local_base_freq": None,
}

_INT_FIELDS = ("block_size", "n_layer", "n_embd", "vocab_size", "padding_multiple", "n_head")
_OPT_INT_FIELDS = ("padded_vocab_size", "head_size", "n_query_groups", "intermediate_size", "sliding_window_size")
_BOOL_FIELDS = ("parallel_residual", "shared_attention_norm", "bias", "lm_head_bias")
_STR_FIELDS = ("name", "norm_class_name", "mlp_class_name", "gelu_approximate")
#: Far above any real model; a config past these is damaged or hostile (a layer count sizes lists
#: before any tensor is looked at). Candidates for ``ckpt_tool/limits.py``.
MAX_DIM = 1 << 24
MAX_LAYERS = 1 << 12


def _bad(where: str, field: str, value: Any, what: str) -> InvalidFile:
    return InvalidFile(f"{where}: {field} = {value!r:.60} is not {what}", f"fix {where}")


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_DIM


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def resolve_lit(cfg: Mapping[str, Any], where: str = "model_config.yaml") -> dict[str, Any]:
    """``cfg`` over LitGPT's defaults, with the fields ``Config.__post_init__`` derives filled in.

    Adds ``rope_n_elem`` (rotated dims per head) as LitGPT computes it. Refuses fields LitGPT 0.5.13 does
    not have: a newer LitGPT field may change the model, and ignoring it would convert the wrong model.

    Raises:
        InvalidFile: a field of the wrong type or out of range, or inconsistent head geometry.
        Unsupported: a field this converter does not know.
    """
    if not isinstance(cfg, Mapping):
        raise InvalidFile(f"{where}: expected a mapping of settings, found {type(cfg).__name__}")
    unknown = sorted(str(k) for k in cfg if k not in LIT_DEFAULTS)
    if unknown:
        raise Unsupported(
            f"{where}: unknown LitGPT config field(s) {', '.join(unknown[:5])}",
            "this converter knows the fields of LitGPT 0.5.13; a newer field may change the model",
        )
    c = {**LIT_DEFAULTS, **cfg}
    for f in _INT_FIELDS:
        if not _pos_int(c[f]):
            raise _bad(where, f, c[f], "a positive integer")
    if c["n_layer"] > MAX_LAYERS:
        raise InvalidFile(f"{where}: n_layer = {c['n_layer']} is past the limit of {MAX_LAYERS} layers")
    for f in _OPT_INT_FIELDS:
        if c[f] is not None and not _pos_int(c[f]):
            raise _bad(where, f, c[f], "a positive integer")
    for f in _BOOL_FIELDS:
        if not isinstance(c[f], bool):
            raise _bad(where, f, c[f], "true or false")
    for f in _STR_FIELDS:
        if not isinstance(c[f], str):
            raise _bad(where, f, c[f], "a string")
    if not _number(c["norm_eps"]) or c["norm_eps"] <= 0:
        raise _bad(where, "norm_eps", c["norm_eps"], "a positive number")
    if not _number(c["rope_base"]) or c["rope_base"] <= 0:
        raise _bad(where, "rope_base", c["rope_base"], "a positive number")
    if not _number(c["rotary_percentage"]) or not 0 <= c["rotary_percentage"] <= 1:
        raise _bad(where, "rotary_percentage", c["rotary_percentage"], "a number in [0, 1]")
    geo = Geometry.from_config(c, where)
    c["head_size"], c["n_query_groups"] = geo.head_size, geo.n_query_groups
    if c["padded_vocab_size"] is None:
        m = c["padding_multiple"]
        c["padded_vocab_size"] = c["vocab_size"] + (-c["vocab_size"] % m)
    else:
        c["vocab_size"] = min(c["vocab_size"], c["padded_vocab_size"])
    if c["intermediate_size"] is None:
        if c["mlp_class_name"] == "LLaMAMLP":
            raise InvalidFile(f"{where}: intermediate_size is missing (LLaMAMLP needs it)", f"fix {where}")
        c["intermediate_size"] = 4 * c["n_embd"]
    if c["sliding_window_size"] is None:
        c["sliding_window_indices"] = None  # unused by LitGPT without a window
    else:
        idx = c["sliding_window_indices"]
        if idx is None:
            c["sliding_window_indices"] = [1] * c["n_layer"]
        elif not isinstance(idx, list) or len(idx) < c["n_layer"] or any(i not in (0, 1) for i in idx):
            raise _bad(where, "sliding_window_indices", idx, f"a list of at least {c['n_layer']} 0/1 flags")
        else:
            c["sliding_window_indices"] = idx[: c["n_layer"]]
    c["rope_n_elem"] = int(c["rotary_percentage"] * c["head_size"])
    return c


def geometry(c: Mapping[str, Any]) -> Geometry:
    return Geometry(c["n_head"], c["n_query_groups"], c["head_size"])


def require(c: Mapping[str, Any], model: str, rules: Mapping[str, tuple[Any, str]]) -> None:
    """Refuse a LitGPT config whose ``field`` is not ``expected``: ``rules = {field: (expected, why)}``;
    a tuple ``expected`` lists the allowed values.

    Also refuses every feature of ``PLAIN`` that is switched on: transformers' implementation of
    ``model`` has none of them, so the converted model would compute something else.
    """
    name, norm = c.get("name", ""), c.get("norm_class_name")
    if (norm == "RMSNorm" and "Gemma" in name) or (norm == "LayerNorm" and "OLMo" in name):
        raise Unsupported(
            f"LitGPT config {name!r}: LitGPT changes its {norm} for names containing 'Gemma' / 'OLMo' "
            f"(litgpt.Config.norm_class), which Hugging Face {model} does not do",
            "rename the model",
        )
    checks = {**{k: (v, "") for k, v in PLAIN.items()}, **rules}
    for field, (expected, why) in checks.items():
        value = c.get(field, LIT_DEFAULTS.get(field))
        if (value not in expected) if isinstance(expected, tuple) else (value != expected):
            raise Unsupported(
                f"LitGPT config {c.get('name')!r}: {field} = {c.get(field)!r:.60} cannot be converted to "
                f"Hugging Face {model}" + (f" ({why})" if why else f" (it needs {expected!r})"),
                "only configurations transformers can reproduce exactly are converted",
            )


def same_model(user: Mapping[str, Any], derived: Mapping[str, Any], fields: Sequence[str]) -> None:
    """Refuse a user's ``model_config.yaml`` that describes another model than ``config.json`` does."""
    for f in fields:
        if user.get(f) != derived.get(f):
            raise Refused(
                f"model_config.yaml and config.json describe different models: {f} is {user.get(f)!r:.40} "
                f"in model_config.yaml, {derived.get(f)!r:.40} from config.json",
                "drop model_config.yaml to derive it from config.json, or fix it",
            )


def lit_name_claimed(name: Any) -> bool:
    """Whether LitGPT's converters (0.5.13) pick a family for ``name`` by name (falcon, Gemma-2/3, phi,
    Qwen2.5/QwQ, OLMo-2, Qwen3) before falling back on ``mlp_class_name`` (LLaMA family or GPT-NeoX)."""
    if not isinstance(name, str):
        return False
    low = name.lower()
    return (
        "falcon" in name
        or name.startswith(("Gemma-2", "Gemma-3"))
        or low.startswith(("phi", "qwen2.5", "qwq", "olmo-2-", "qwen3"))
    )


def pick_name(hf: Mapping[str, Any], ok: Callable[[str], bool], fallback: str) -> str:
    """A LitGPT ``name`` for a model made from ``config.json``: the repository's own name when LitGPT's
    name-based dispatch gives it this family and layout, else ``fallback`` (which does).

    LitGPT decides layout details by name (Falcon's norms by "7b"/"40b", Phi-4's tied head), so the name
    is part of the model: a name that would send LitGPT down another path (or change its norms: "Gemma",
    "OLMo") is never used.
    """
    src = hf.get("_name_or_path")
    if isinstance(src, str) and src:
        base = src.rstrip("/").rsplit("/", 1)[-1]
        if base and len(base) <= 200 and "Gemma" not in base and "OLMo" not in base and ok(base):
            return base
    return fallback


# --- Hugging Face config.json ------------------------------------------------------------------------

_MISSING = object()


def model_type(hf: Mapping[str, Any]) -> str | None:
    mt = hf.get("model_type")
    return mt if isinstance(mt, str) else None


def architectures(hf: Mapping[str, Any]) -> list[str]:
    a = hf.get("architectures")
    return [x for x in a if isinstance(x, str)] if isinstance(a, list) else []


def hf_int(hf: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    v = hf.get(key, default)
    if v is _MISSING:
        raise InvalidFile(f"config.json: {key} is missing", "restore config.json from the model repository")
    if not _pos_int(v):
        raise _bad("config.json", key, v, "a positive integer")
    return v


def hf_float(hf: Mapping[str, Any], key: str, default: Any = _MISSING, *, low: float = 0.0) -> float:
    v = hf.get(key, default)
    if v is _MISSING:
        raise InvalidFile(f"config.json: {key} is missing", "restore config.json from the model repository")
    if not _number(v) or v <= low:
        raise _bad("config.json", key, v, f"a number above {low}")
    return v


def hf_bool(hf: Mapping[str, Any], key: str, default: bool) -> bool:
    v = hf.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad("config.json", key, v, "true or false")
    return v


def refuse_hf(model: str, what: str, why: str) -> Unsupported:
    return Unsupported(
        f"config.json: {what} cannot be converted to LitGPT ({why})",
        f"only {model} configurations LitGPT reproduces exactly are converted",
    )


def rope_from_hf(hf: Mapping[str, Any], model: str, theta_keys: Sequence[str] = ("rope_theta",)) -> tuple[float, dict]:
    """``(rope_theta, rope dict)`` of a config.json in either transformers spelling.

    4.x writes ``rope_theta`` (GPT-NeoX: ``rotary_emb_base``) and ``rope_scaling``; 5.x writes
    ``rope_parameters = {rope_type, rope_theta, partial_rotary_factor, ...}``. Only plain RoPE
    (``rope_type`` "default") has a LitGPT equivalent here: linear, dynamic, yarn, llama3 and LongRoPE
    ("longrope", "su": Phi-3 / Phi-4-mini long-context) change every rotation, and LitGPT's Phi-3 and
    Falcon have none of them. When both spellings give a theta they must agree (4.x reads one, 5.x the other).
    """
    dicts = []
    for key in ("rope_scaling", "rope_parameters"):
        v = hf.get(key)
        if v is None:
            continue
        if not isinstance(v, dict):
            raise _bad("config.json", key, v, "a mapping")
        if any(isinstance(x, dict) for x in v.values()):
            raise refuse_hf(model, f"per-layer-type {key}", "one RoPE for every layer is supported")
        kind = v.get("rope_type", v.get("type", "default"))
        if kind != "default":
            raise refuse_hf(model, f"{key} type {kind!r}", "LitGPT's implementation of this family has plain RoPE only")
        dicts.append(v)
    params = next((d for d in dicts if d), {})  # 5.x: a non-empty rope_scaling wins over rope_parameters
    thetas = [hf[k] for k in theta_keys if hf.get(k) is not None]
    thetas += [d["rope_theta"] for d in dicts if d.get("rope_theta") is not None]
    for t in thetas:
        if not _number(t) or t <= 0:
            raise _bad("config.json", "rope_theta", t, "a positive number")
    if len(set(thetas)) > 1:
        raise InvalidFile(f"config.json gives the RoPE base twice with different values ({thetas[0]} and {thetas[1]})")
    theta = thetas[0] if thetas else 10000.0
    return theta, params


#: Token ids are tokenizer facts a model_config.yaml does not hold. Written as null so that the model
#: classes' defaults (Phi-3: pad 32000, GPT-NeoX: eos 2, Falcon: 11) — wrong for most checkpoints, and a
#: pad id past a small vocabulary breaks loading — are not taken for the truth; the caller copies the real
#: ones from the original config.json / generation_config.json when it has them.
TOKEN_IDS: dict[str, None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def lit_number(x: float) -> int | float:
    """``10000.0`` → ``10000``: LitGPT writes integral rope bases as ints (same value, same rotations)."""
    return int(x) if float(x).is_integer() else x


def rope_json(theta: float, partial: float | None = None) -> dict[str, Any]:
    """The RoPE fields of a config.json that transformers 4.x and 5.x read the same way."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if partial is not None:
        params["partial_rotary_factor"] = partial
    return {"rope_theta": theta, "rope_scaling": None, "rope_parameters": params}


# --- tensor maps ----------------------------------------------------------------------------------------

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """LitGPT tensors ``lit`` ↔ Hugging Face tensors ``hf`` (name, shape), with the op each way.

    ``to_hf`` maps the lit tensors (in order) to the hf tensors, ``to_lit`` the reverse; None is a copy.
    """

    lit: tuple[tuple[str, Shape], ...]
    hf: tuple[tuple[str, Shape], ...]
    to_hf: Compute | None = None
    to_lit: Compute | None = None
    why: str = ""


def same(lit: str, hf: str, shape: Shape) -> Unit:
    return Unit(((lit, shape),), ((hf, shape),))


def regrouped(lit: str, hf: str, shape: Shape, geo: Geometry) -> Unit:
    """Fused qkv: LitGPT's grouped ``[Q|K|V]`` rows ↔ per-group interleaved ``[q…, k, v]`` rows."""
    return Unit(
        ((lit, shape),),
        ((hf, shape),),
        partial(_interleave, geo),
        partial(_group, geo),
        "qkv rows regrouped (per-group interleaved in Hugging Face)",
    )


def split_in_hf(lit: str, parts: Sequence[tuple[str, Shape]], why: str) -> Unit:
    """One LitGPT tensor ↔ several Hugging Face row blocks (LitGPT's qkv ↔ Phi's q/k/v)."""
    lit_shape = (sum(s[0] for _, s in parts), *parts[0][1][1:])
    sizes = tuple(s[0] for _, s in parts)
    return Unit(((lit, lit_shape),), tuple(parts), partial(_split, sizes), _cat, why)


def fused_in_hf(parts: Sequence[tuple[str, Shape]], hf: str, why: str) -> Unit:
    """Several LitGPT tensors ↔ one Hugging Face tensor of their rows (fc_1 + fc_2 ↔ Phi-3's gate_up_proj)."""
    hf_shape = (sum(s[0] for _, s in parts), *parts[0][1][1:])
    sizes = tuple(s[0] for _, s in parts)
    return Unit(tuple(parts), ((hf, hf_shape),), _cat, partial(_split, sizes), why)


def head(
    lit_emb: str, hf_emb: str, hf_head: str, shape: Shape, tied: bool, hf_names: Any = (), untie: str = ""
) -> list[Unit]:
    """The embedding and the output head.

    A LitGPT model always has its own ``lm_head.weight``. When the Hugging Face model ties its head to the
    embeddings, lit → hf writes the embeddings only and checks, when the tensors are read, that
    ``lm_head.weight`` holds the same bits (a fine-tuned head that drifted would otherwise be dropped
    silently, as LitGPT's converter drops it; ``untie`` says how to keep it); hf → lit writes the embeddings
    twice, as LitGPT does. A tied Hugging Face file that still carries the head (older saves do) must carry
    the same bits: transformers would use the embeddings.
    """
    emb, lm = (lit_emb, shape), ("lm_head.weight", shape)
    if not tied:
        return [same(lit_emb, hf_emb, shape), same("lm_head.weight", hf_head, shape)]
    if hf_head in hf_names:
        hint = "config.json ties the head, so transformers ignores this file's; set tie_word_embeddings false if not"
        check = partial(_check_tied, (hf_emb, hf_head), False, hint)
        return [Unit((emb, lm), ((hf_emb, shape), (hf_head, shape)), check, check, "tied head checked")]
    return [
        Unit(
            (emb, lm),
            ((hf_emb, shape),),
            partial(_check_tied, (lit_emb, "lm_head.weight"), True, untie or "this model type cannot hold it"),
            _twice,
            "lm_head tied to the embeddings",
        )
    ]


# --- computes (run by the engine; torch imported there) ------------------------------------------------


def _interleave(geo: Geometry, ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    return [geo.to_interleaved(ts[0])]


def _group(geo: Geometry, ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    return [geo.to_grouped(ts[0])]


def _split(sizes: tuple[int, ...], ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    return list(ts[0].split(sizes))


def _cat(ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    import torch

    return [torch.cat(list(ts))]


def _twice(ts: Sequence[torch.Tensor], load: Any) -> list[torch.Tensor]:
    return [ts[0], ts[0]]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads and -0.0 included): what "tied" means for stored tensors."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    size = a.element_size()
    if a.dtype.is_floating_point and size in ints:
        return torch.equal(a.contiguous().view(ints[size]), b.contiguous().view(ints[size]))
    return torch.equal(a, b)


def _check_tied(
    names: tuple[str, str], drop: bool, hint: str, ts: Sequence[torch.Tensor], load: Any
) -> list[torch.Tensor]:
    if not same_bits(ts[0], ts[1]):
        raise Refused(
            f"{names[1]} differs from {names[0]}, but the Hugging Face model ties its output head to the "
            "embeddings: converting would silently replace the head",
            hint,
        )
    return [ts[0]] if drop else [ts[0], ts[1]]


# --- plans ----------------------------------------------------------------------------------------------


def check_layers(n_layer: int, tensors: Mapping[str, TensorInfo], where: str) -> None:
    """A config with more layers than the file has tensors is wrong (and would make a huge plan)."""
    if n_layer > len(tensors):
        raise InvalidFile(
            f"{where}: the config has {n_layer} layers but the checkpoint holds only {len(tensors)} tensors",
            "the config does not belong to these weights",
        )


def plan(
    units: Sequence[Unit],
    tensors: Mapping[str, TensorInfo],
    src: str,
    sink: str,
    to: str,
    what: str,
    ignore: re.Pattern[str] | None = None,
) -> list[Step]:
    """Steps for direction ``to`` ("hf": read the units' lit side; "lit": read their hf side).

    Outputs keep the source dtype (LitGPT's converters do not cast unless asked; the engine casts).

    Raises:
        InvalidFile: a tensor the config calls for is missing or has another shape.
        Unsupported: a source tensor no unit takes (named, with a hint for LoRA / adapter tensors),
            a non-float tensor (quantized weights), or one unit's tensors in different dtypes.
    """
    missing: list[str] = []
    steps: list[Step] = []
    taken: set[str] = set()
    for u in units:
        reads, outs, fn = (u.lit, u.hf, u.to_hf) if to == "hf" else (u.hf, u.lit, u.to_lit)
        absent = [n for n, _ in reads if n not in tensors]
        if absent:
            missing.extend(absent)
            continue
        dtypes = []
        for n, shape in reads:
            info = tensors[n]
            if tuple(info.shape) != shape:
                raise InvalidFile(
                    f"{what}: {n} has shape {tuple(info.shape)}, the config gives {shape}",
                    "the config does not describe these weights (n_layer, n_embd, n_head, n_query_groups, "
                    "head_size, intermediate_size, vocabulary)",
                )
            if not is_float(info.dtype):
                raise Unsupported(f"{what}: {n} is {info.dtype}: quantized or integer weights are not converted")
            dtypes.append(info.dtype)
        if len(set(dtypes)) > 1:
            raise Unsupported(
                f"{what}: {', '.join(n for n, _ in reads)} have different dtypes ({', '.join(dtypes)}) and are "
                "fused into one tensor",
                "cast the checkpoint to one dtype first",
            )
        taken.update(n for n, _ in reads)
        steps.append(
            Step(
                tuple(Out(sink, n, dtypes[0], shape) for n, shape in outs),
                tuple(Read(src, n) for n, _ in reads),
                fn,
                u.why,
            )
        )
    if missing:
        raise InvalidFile(
            f"{what}: {len(missing)} tensor(s) the config calls for are missing, e.g. {', '.join(missing[:3])}",
            "the file is incomplete or the config does not belong to it",
        )
    left = [n for n in tensors if n not in taken and not (ignore is not None and ignore.fullmatch(n))]
    if left:
        hint = "the config does not describe these weights"
        if any("lora_" in n for n in left):
            hint = "LoRA tensors cannot be converted as a model: merge the adapter first"
        elif any("adapter" in n or "gating_factor" in n for n in left):
            hint = "adapter tensors have no Hugging Face equivalent"
        raise Unsupported(
            f"{what}: {len(left)} tensor(s) have no place in the converted model, e.g. {', '.join(left[:3])}",
            hint,
        )
    return steps
