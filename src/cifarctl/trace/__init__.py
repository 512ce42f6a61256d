"""Shape tracing and diagnosis behind ``cifarctl inspect``.

Names load on first use (PEP 562), so ``cifarctl.trace.records`` can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"inspect_model": "api", "parse_input_shape": "api", "Diagnosis": "records", "LayerRecord": "records",
          "TraceResult": "records", "Warning_": "records", "fmt_shape": "records"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'cifarctl.trace' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cifarctl.trace.{_WHERE[name]}"), name)
