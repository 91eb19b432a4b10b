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
