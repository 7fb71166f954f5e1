"""cimc: compile ONNX models for SRAM compute-in-memory accelerators and simulate them."""

from .errors import CimcError
from .frontend import import_onnx
from .interpreter import Interpreter, interpret
from . import errors, ops
from .ir import Graph, Node, Value

__all__ = ["errors", "ops", "CimcError", "Graph", "Interpreter", "Node", "Value", "import_onnx", "interpret"]
__version__ = "0.1.0"
