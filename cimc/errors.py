"""Errors a user can cause and fix.

Every message says what went wrong, where (file, input, node or option) and how to fix it; the
CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations


class CimcError(Exception):
    """Base of every error caused by bad input rather than a bug in cimc."""


class ModelLoadError(CimcError):
    """The file is missing, is not ONNX, is truncated, or fails the ONNX checker."""


class UnsupportedOpError(CimcError):
    """The model uses operators (or attribute values) that the op registry does not cover."""

    def __init__(self, unsupported: dict[str, list[str]], detail: dict[str, str] | None = None):
        self.unsupported = unsupported
        parts = []
        for op in sorted(unsupported):
            names = unsupported[op]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            why = f" ({detail[op]})" if detail and op in detail else ""
            parts.append(f"{op}{why} at {shown}")
        super().__init__(
            f"unsupported operators: {'; '.join(parts)}. "
            "Rewrite the model without them or register them with cimc.ops.register_op"
        )


class ShapeError(CimcError):
    """A shape cannot be made static, or given shapes disagree with the model."""


class FeedError(CimcError):
    """Inputs given to interpret or simulate do not match the graph's inputs."""


class OptionError(CimcError):
    """A pass, pipeline or target option is not one of the allowed values."""


class PassError(CimcError):
    """A pass failed; the message names its pipeline position and the passes already run."""


class OutputError(CimcError):
    """An output file cannot be written where it was asked for."""


class ProgramError(CimcError):
    """A .cimx program file is truncated, altered or of an unknown version."""


class GraphError(CimcError):
    """A graph breaks the IR's invariants: a node reads an undefined value, a value has two
    writers, the reader index is stale, or an output is never defined."""


class NodeError(ModelLoadError):
    """A node's attributes or inputs break ONNX's rules for its op (negative pads, zero strides,
    a group that does not divide the channels, an axis out of range, an unknown Cast type...)."""


class SizeLimitError(CimcError):
    """A tensor, or the interpreter's live set, would need more memory than the limit allows."""
