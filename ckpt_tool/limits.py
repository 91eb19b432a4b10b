"""Every safety limit in one place (documented in README, "Limits").

A checkpoint, its side files, and even the tool's own journal and temp files
are hostile input: each limit bounds the time or memory a small file can cost.
They are far above anything a real checkpoint needs; past one, the command
refuses with one ``error:`` line naming the limit (exit 4), instead of
swallowing the machine.
"""

from __future__ import annotations

#: LoRA scale alpha/r (and alpha itself): real adapters use 0.01-1000; a NaN, infinite or absurd value
#: would silently turn every merged weight into garbage.
MAX_LORA_SCALE = 1e6
#: LoRA rank r: no real weight matrix has more rows; a larger recorded r is damage (and would overflow
#: a float square root with rsLoRA).
MAX_LORA_RANK = 1 << 20

# --- torch zip (``.pth`` / ``.bin`` / ``.pt``) ------------------------------------------------------

#: Size of ``data.pkl``. torch.save writes ~115 bytes per tensor (~350 with Adam state): a 405B model's
#: pickle is ~0.15 MB, a 6,000-tensor model with full optimizer state ~2 MB, so 16 MiB is 8x the
#: largest we know of (~48,000 tensors with Adam state). A crafted pickle costs up to ~35 bytes of
#: objects per input byte (an empty list per 2 bytes) and ~0.5 us per byte to pre-scan and replay,
#: so the cap bounds the worst case near 600 MB and ~10 s.
MAX_PICKLE_BYTES = 16 << 20

#: Nesting depth of the unpickled structure (containers in containers). A state dict is 2-4 deep, a
#: Lightning checkpoint with optimizer state and hyperparameters ~10. Deeper structures make CPython's
#: C code recurse without a guard (hashing a 150,000-deep tuple key crashes the interpreter), so the
#: opcode pre-scan refuses them before the pickle is replayed.
MAX_PICKLE_DEPTH = 100

#: Items between a MARK and the opcode that collects them (one tuple, or one batch of list/dict items).
#: Python's pickler writes list and dict items in batches of 1,000; tuples are shapes and arguments.
#: Checked by the pre-scan, so the C unpickler never builds the stack for a 30-million-item MARK.
MAX_PICKLE_MARK_ITEMS = 1 << 20

#: Entries in the zip's central directory. One per storage plus ~7 records: a 6,000-tensor model with
#: Adam state has ~18,000. zipfile builds an object (~400 bytes) per entry before anything is checked.
MAX_ZIP_MEMBERS = 1 << 18

#: Dimensions of one tensor (torch itself refuses more than 64 in most kernels; real weights have 1-5).
#: Bounds the cost of shape arithmetic on a hostile ``torch.Size`` with millions of entries.
MAX_TENSOR_DIMS = 64

#: Bytes by which a tensor view may exceed its storage. Views with stride 0 or overlapping strides
#: (``expand()``) are legal in torch and cost nothing on disk, but every consumer that copies them
#: (merge, diff, convert) materialises the logical size: a 60000x60000 stride-0 view of one float is
#: 14 GB. Real checkpoints address at most their storage (HF's ``position_ids`` is an expanded arange
#: of the same size), so 64 MiB of expansion is generous.
MAX_VIEW_EXPANSION_BYTES = 64 << 20

# --- safetensors ----------------------------------------------------------------------------------

#: Bytes of JSON header. The reference reader allows 100 MB; a 405B shard header is ~100 KB and the
#: largest single-file headers seen (100k+ tensors) ~10 MB. Python's JSON parser costs ~10x the text
#: in memory, so 16 MiB bounds a header parse at ~200 MB.
MAX_SAFETENSORS_HEADER_BYTES = 16 << 20

#: Tensors declared in one safetensors header (DeepSeek-V3 has ~91,000 across 163 shards).
MAX_SAFETENSORS_TENSORS = 1 << 18

# --- side files (configs, indexes, model cards) ---------------------------------------------------

#: JSON configs (``config.json``, ``adapter_config.json``, ``lit_config.json``): a few KB.
MAX_CONFIG_BYTES = 16 << 20

#: Shard index (``model.safetensors.index.json``): the index of a 1T-parameter model is a few MB.
MAX_INDEX_BYTES = 256 << 20

#: LitGPT YAML files (``model_config.yaml``, ``hyperparameters.yaml``, ``prompt_style.yaml``) are 1-3 KB.
#: PyYAML parses pure Python at ~1 MB/s, so the JSON cap would allow a 16 s parse.
MAX_YAML_BYTES = 1 << 20

#: YAML nodes (scalars, sequences, mappings) in one LitGPT YAML file (real ones have < 200). Anchors
#: and aliases are refused outright: LitGPT never writes them, and aliases are how a 1 KB file
#: expands into a billion-node structure ("billion laughs").
MAX_YAML_NODES = 100_000

#: A side file copied next to written weights (tokenizer.json, configs, chat templates): the largest
#: real tokenizer.json files are ~35 MB.
MAX_SIDE_FILE_BYTES = 1 << 30

#: How much of a ``README.md`` is read to recognise a PEFT model card (``library_name: peft``).
MAX_MODEL_CARD_PROBE_BYTES = 4096

# --- model geometry ---------------------------------------------------------------------------------

#: Layers, heads, query groups in a model config. The largest real models have ~126-160 layers and
#: 128 heads; per-layer lists (``sliding_window_indices``) are built from ``n_layer``, so ``1e9``
#: would allocate gigabytes.
MAX_LAYERS = 10_000
#: Experts of a mixture-of-experts layer; sizes the tensor table before any tensor is looked at.
MAX_EXPERTS = 1 << 12
#: Any one dimension read from a config (hidden size, vocabulary, intermediate size, context length).
MAX_DIM = 1 << 24
#: Attention heads / query groups, and the size of one head.
MAX_HEADS = 1 << 16
MAX_HEAD_SIZE = 1 << 16
#: Tensors of the LitGPT state dict a model config describes, built as a table with no checkpoint to
#: compare against (the LoRA module map): DeepSeek-V3, the largest real table, has ~47,000.
MAX_CONFIG_TENSORS = 1 << 18
#: Rows of one weight the LoRA module map runs the conversion steps on as ``(rows, 2)`` float32 probes
#: (32 MiB each at the limit); the largest real weights, vocabularies, have ~2**18 rows.
MAX_PROBE_ROWS = 1 << 22

# --- user regular expressions (PEFT ``target_modules``, ``rank_pattern``, ``alpha_pattern``) ------

#: Time one match of a user-supplied pattern against one module name may take. Real patterns match in
#: microseconds; a catastrophic-backtracking pattern (``(a+)+$``) takes years. Evaluated with the
#: ``regex`` engine's timeout, same results as ``re`` for every pattern that finishes.
MAX_REGEX_MATCH_SECONDS = 0.05

#: Time the slow (> 1 ms) matches of one user pattern may take together in one process: a pattern just
#: under the per-match limit on each of 6,000 modules would otherwise still cost five minutes.
MAX_REGEX_TOTAL_SECONDS = 1.0

#: Length of a module name a user pattern is matched against (real names are < 200 characters).
MAX_MODULE_NAME_CHARS = 4096


#: The migrate journal (``ROOT/.ckpt-tool-migrate.journal``) is read before anything else: a bigger file is
#: refused unread. 256 MiB holds plans for several hundred thousand run directories.
MAX_JOURNAL_BYTES = 256 * 1024 * 1024
#: One journal record (one line). Our records are one step each; the largest is a written config file
#: (at most MAX_MIGRATE_WRITE_BYTES, JSON-escaped).
MAX_JOURNAL_LINE = 8 * 1024 * 1024
#: Steps in one journal, all sessions together (2,000 run directories plan about 15,000 steps).
MAX_MIGRATE_STEPS = 1_000_000
#: A file migrate writes from the plan itself (a converted config, hyperparameters.yaml, migration.json).
MAX_MIGRATE_WRITE_BYTES = 1024 * 1024
#: A companion file migrate copies (tokenizers, configs); weights are only ever renamed, never copied.
MAX_MIGRATE_COPY_BYTES = 64 * 1024 * 1024
#: The free-text reason of one plan step.
MAX_MIGRATE_REASON = 16 * 1024
