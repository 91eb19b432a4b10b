"""ckpt-tool: understand and repair LLM fine-tuning checkpoints.

The core knows containers (safetensors, torch zip) and operations; format
conventions (LitGPT, PEFT, plain/HF) live in plugins.
"""

from __future__ import annotations

__version__ = "0.1.0"

import pluggy as _pluggy

#: Decorator for plugin hook implementations (see ``ckpt_tool.hookspecs``).
hookimpl = _pluggy.HookimplMarker("ckpt_tool")
