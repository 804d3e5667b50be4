"""FLOPs measured from what actually ran, priced by the Rust engine (``rust/flops-engine``)."""

from .tracer import OUTSIDE_MODULES, FlopsTracer, component_summary, merge_reports, optimizer_kind

__all__ = ["OUTSIDE_MODULES", "FlopsTracer", "component_summary", "merge_reports", "optimizer_kind"]
