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

#: Model geometry read from a config (``model_config.yaml``, ``config.json``): larger than any real model.
#: A layer or expert count sizes the tensor table before any tensor is looked at, so a hostile config is
#: refused here instead of planning millions of tensors.
MAX_LAYERS = 1 << 12
MAX_EXPERTS = 1 << 12
#: Any one dimension (hidden size, vocabulary, intermediate size, context length).
MAX_DIM = 1 << 24
#: Attention heads / query groups, and the size of one head.
MAX_HEADS = 1 << 16
MAX_HEAD_SIZE = 1 << 16
