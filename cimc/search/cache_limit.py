"""The study's cache folder, kept under a size limit.

A search over an elastic family writes a subnet export and a compressed graph per architecture
(ResNet-50 at ImageNet scale: ~160 MB an architecture, ViT-B ~0.7 GB), so an unbounded cache
fills a disk within a few hundred architectures. The files are products, not results (the
results are the study's rows): an evicted one is rebuilt when a config needs it again. Eviction
takes the least recently used first (a hit refreshes a file's time, :func:`mark_used`). A file
used within the last ``IN_USE_S`` seconds stays even over the limit, as another worker process
may be reading it (the folder is shared by every worker of the study).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CACHE_GB = 10.0
"""The default limit: a few dozen ImageNet-scale architectures, thousands of small ones."""

IN_USE_S = 300.0
"""Longer than an evaluation takes from exporting a subnet to importing it (ViT-B: < 1 min)."""

EVICTABLE = ("*.onnx", "*.pkl")  # subnet exports, compressed graphs (data files are small)


def mark_used(path: Path) -> None:
    """Refresh ``path``'s time, so eviction takes it last (a file already gone is fine)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def trim(folder: Path, limit_gb: float) -> list[Path]:
    """Remove the least recently used products in ``folder`` until they fit in ``limit_gb``;
    the removed files, oldest first."""
    found = []
    for pattern in EVICTABLE:
        for path in folder.glob(pattern):
            try:
                st = path.stat()
            except FileNotFoundError:  # another worker trimmed it
                continue
            found.append((st.st_mtime, st.st_size, path))
    found.sort()
    excess = sum(size for _, size, _ in found) - limit_gb * 1e9
    recent = time.time() - IN_USE_S
    removed = []
    for mtime, size, path in found:
        if excess <= 0 or mtime > recent:
            break
        try:
            if path.stat().st_mtime > recent:  # a worker started using it since
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        excess -= size
        removed.append(path)
    return removed
