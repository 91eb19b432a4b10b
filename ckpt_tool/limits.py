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
