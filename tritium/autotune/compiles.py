"""Counts the Triton kernel variants this process builds (compiled, or loaded from Triton's disk cache: either
way the work happens at the first launch of a new specialization). `count()` before and after a call tells
whether it met a shape that start-up did not; `built_since(n)` names the variants built after the n-th."""
from __future__ import annotations

import triton

_built: list[str] = []  # "kernel(arg: type, ...)" of each variant, in build order
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
        _built.append(f"{kwargs['fn'].name}({', '.join(map(str, kwargs['key'][1]))})")
        return previous(*args, **kwargs) if previous else None

    knobs.jit_post_compile_hook = counted


def count() -> int:
    return len(_built)


def built_since(n: int) -> list[str]:
    return _built[n:]
