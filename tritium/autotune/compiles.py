"""Counts the Triton kernel variants this process builds (compiled, or loaded from Triton's disk cache: either
way the work happens at the first launch of a new specialization). `count()` before and after a call tells
whether it met a shape that start-up did not."""
from __future__ import annotations

import triton

_count = 0
_installed = False


def install() -> None:
    """Chain a counter onto triton's post-compile hook (once; an existing hook keeps running)."""
    global _installed
    if _installed:
        return
    _installed = True
    knobs = triton.knobs.runtime
    previous = knobs.jit_post_compile_hook

    def counted(*args, **kwargs):
        global _count
        _count += 1
        return previous(*args, **kwargs) if previous else None

    knobs.jit_post_compile_hook = counted


def count() -> int:
    return _count
