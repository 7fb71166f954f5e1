"""cimc: compile ONNX models for SRAM compute-in-memory accelerators and simulate them."""

from . import cim_ops, errors, ops
from .errors import CimcError
from .frontend import import_onnx
from .interpreter import Interpreter, interpret
from .ir import Graph, Node, Value
from .pass_manager import DumpIR, Instrument, Timing, VerifyEach, run_passes
from .passes_base import Pass, PassContext, PassResult, Pipeline, parse_pipeline, register_pass
from .report.bits import storage_report

__all__ = [
    "CimcError",
    "DumpIR",
    "Graph",
    "Instrument",
    "Interpreter",
    "Node",
    "Pass",
    "PassContext",
    "PassResult",
    "Pipeline",
    "Timing",
    "Value",
    "VerifyEach",
    "cim_ops",
    "errors",
    "import_onnx",
    "interpret",
    "ops",
    "parse_pipeline",
    "register_pass",
    "run_passes",
    "storage_report",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Late imports: the compiler and simulator pull in targets/ (and Numba) only when used."""
    if name == "compile":
        from .compiler import compile

        return compile
    if name == "simulate":
        from .targets.simulator import simulate

        return simulate
    if name == "load_program":
        from .program import load_program

        return load_program
    if name == "search":  # the package, callable: cimc.search(...) is cimc.search.run(...)
        import importlib

        return importlib.import_module(".search", __name__)
    if name == "load_target":
        from .targets.params import load_target

        return load_target
    raise AttributeError(f"module 'cimc' has no attribute {name!r}")
