"""The C++ ops' output cache: reuse of freed large CPU outputs. Off unless you turn it on.

Why it exists: a fresh multi-MB output is first-touched inside the kernel, and every page fault
costs more than quantizing the page; glibc returns large blocks to the OS on free, so a stream
of calls pays that every time. With the cache on, outputs of >= 1 MiB made by leankern's C++
CPU kernels come from a pool that keeps up to ``limit_mb`` of freed buffers for the next output
of the same rounded size. The memory is invisible to torch's memory statistics, hence off by
default.

>>> leankern.output_cache.set_limit(512)    # on, up to 512 MB of freed buffers kept
>>> leankern.output_cache.stats()           # {'limit_bytes': ..., 'cached_bytes': ..., 'hits': ..., ...}
>>> leankern.output_cache.flush()           # give the kept buffers back
>>> with leankern.output_cache.enabled(256): ...   # on inside the block only

``LEANKERN_OUTPUT_CACHE_MB`` sets the limit at start-up. Without the extension every call is a
no-op and :func:`stats` reports zeros.
"""
from __future__ import annotations

import contextlib
import threading

from .core import extension

__all__ = ["set_limit", "flush", "stats", "enabled"]

_ZERO = {"limit_bytes": 0, "cached_bytes": 0, "live_bytes": 0, "hits": 0, "misses": 0}


def _check_limit(limit_mb) -> None:
    if isinstance(limit_mb, bool) or not isinstance(limit_mb, int) or limit_mb < 0:
        raise ValueError(f"limit_mb: expected a non-negative int, got {limit_mb!r}")


def set_limit(limit_mb: int) -> None:
    """Keep up to ``limit_mb`` MB of freed outputs (0 = off; lowering it frees down to the limit)."""
    _check_limit(limit_mb)
    ext = extension()
    if ext is not None:
        ext.output_cache_set_limit(limit_mb)


def flush() -> None:
    """Free every cached (unused) buffer; live outputs are untouched."""
    ext = extension()
    if ext is not None:
        ext.output_cache_flush()


def stats() -> dict:
    """``limit_bytes``, ``cached_bytes`` (freed buffers kept), ``live_bytes`` (outputs alive that came
    from the pool), ``hits`` and ``misses`` (allocations of >= 1 MiB served from / not from the pool)."""
    ext = extension()
    return dict(ext.output_cache_stats()) if ext is not None else dict(_ZERO)


_ENABLED_LOCK = threading.Lock()
_OPEN_LIMITS: list = []  # the limits of the enabled() blocks now open, in any thread
_LIMIT_BEFORE = [0]  # MB, the limit before the first of them opened


@contextlib.contextmanager
def enabled(limit_mb: int = 512):
    """Turn the cache on inside the block; when the last open block (of any thread) exits, restore the limit from
    before the first and flush. While several are open the largest of their limits holds (the limit is one per
    process: a block exiting while another thread's is still open must not turn the cache off under it)."""
    _check_limit(limit_mb)
    with _ENABLED_LOCK:
        if not _OPEN_LIMITS:
            _LIMIT_BEFORE[0] = stats()["limit_bytes"] >> 20
        _OPEN_LIMITS.append(limit_mb)
        set_limit(max(_OPEN_LIMITS))
    try:
        yield
    finally:
        with _ENABLED_LOCK:
            _OPEN_LIMITS.remove(limit_mb)
            if _OPEN_LIMITS:
                set_limit(max(_OPEN_LIMITS))
            else:
                set_limit(_LIMIT_BEFORE[0])
                flush()
