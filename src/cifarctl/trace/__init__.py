"""Shape tracing and diagnosis behind ``cifarctl inspect``."""

from cifarctl.trace.api import inspect_model, parse_input_shape
from cifarctl.trace.records import Diagnosis, LayerRecord, TraceResult, Warning_, fmt_shape

__all__ = ["Diagnosis", "LayerRecord", "TraceResult", "Warning_", "fmt_shape", "inspect_model", "parse_input_shape"]
