"""The readable text of a program: what ``cimc disasm`` prints."""

from __future__ import annotations

import numpy as np

from ..program import OPCODES, Program


def disasm_text(program: Program, limit: int | None = None) -> str:
    """Header, then every layer's instructions (the first ``limit`` of each; None: all)."""
    lines = [
        f"; cimc program, format {program.manifest['format_version']}, "
        f"target {program.manifest['target']['name']}",
        f"; pipeline {program.manifest['pipeline']}",
        f"; source sha256 {program.manifest['source_sha256'] or '-'}",
    ]
    ins = program.instructions
    for li, entry in enumerate(program.layers):
        sel = np.flatnonzero(ins["layer"] == li)
        lines.append(
            f"\nlayer {li} {entry['node']} ({entry['op']}, {entry['kind']}): "
            f"{len(sel)} instructions"
        )
        shown = sel if limit is None else sel[:limit]
        for i in shown:
            r = ins[i]
            parts = [f"{i:>7}  {OPCODES[r['op']]:<8}"]
            if r["ma"] >= 0:
                arrays = f"ma={r['ma']}" + (f"+{r['stride']}x{r['span']}" if r["span"] > 1 else "")
                parts.append(arrays)
            for key in ("rows", "bytes", "work", "cycles", "routes"):
                if r[key]:
                    parts.append(f"{key}={r[key]}")
            deps = [str(d) for d in (r["dep0"], r["dep1"]) if d >= 0]
            if deps:
                parts.append("after " + ",".join(deps))
            lines.append("  ".join(parts))
        if limit is not None and len(sel) > limit:
            lines.append(f"         ... {len(sel) - limit} more")
    counts = program.counts()
    lines.append("\n; " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; total {len(ins)}")
    return "\n".join(lines) + "\n"
