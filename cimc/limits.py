"""The memory limit checked before allocating, so a huge shape is refused with its size and the
limit instead of failing inside the allocator (or the operating system's OOM killer).

The limit is ``CIMC_MEMORY_LIMIT`` (bytes, optionally with a K/M/G/T suffix) when set, else half
of the machine's physical memory.
"""

from __future__ import annotations

import os

from .errors import OptionError, SizeLimitError

ENV = "CIMC_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.5
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_limit() -> int:
    """The limit in bytes: ``CIMC_MEMORY_LIMIT`` or half the machine's memory."""
    text = os.environ.get(ENV, "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * DEFAULT_FRACTION)
    number, unit = (text[:-1], text[-1]) if text[-1] in _SUFFIX else (text, "")
    try:
        limit = float(number) * _SUFFIX[unit]
    except ValueError:
        limit = -1.0
    if not limit > 0 or limit == float("inf"):
        raise OptionError(
            f"{ENV}={os.environ[ENV]!r} is not a memory size; give bytes such as 8G or 500M"
        )
    return int(limit)


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_bytes(nbytes: int, what: str, limit: int | None = None) -> None:
    """Raise :class:`SizeLimitError` when ``what`` would need more than ``limit`` bytes."""
    limit = memory_limit() if limit is None else limit
    if nbytes > limit:
        raise SizeLimitError(
            f"{what} would need {format_bytes(nbytes)}, over the memory limit of "
            f"{format_bytes(limit)}; use smaller input shapes (input_shapes, --input-shape) or "
            f"raise the limit with {ENV}=<bytes>"
        )
