"""Counts the Triton kernel variants this process builds (compiled, or loaded from Triton's disk cache: either
way the work happens at the first launch of a new specialization). `count()` before and after a call tells
whether it met a shape that start-up did not; `built_since(n)` names the variants built after the n-th."""
from __future__ import annotations

import triton

_built: list[str] = []  # "kernel(arg=specialization, ...)" of each variant, in build order
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
        fn = kwargs["fn"]  # key = (per-argument (type, alignment or constexpr value), options)
        specs = zip(fn.jit_function.params, kwargs["key"][0])
        _built.append(f"{fn.name}({', '.join(f'{p.name}={spec}' for p, spec in specs)})")
        return previous(*args, **kwargs) if previous else None

    knobs.jit_post_compile_hook = counted


def count() -> int:
    return len(_built)


def built_since(n: int) -> list[str]:
    return _built[n:]
