"""Compiling kernels for sm_90 on a machine without a GPU (Triton compiles for a named target, with the ptxas
in its wheel), for tests that check what the GPU would run: the scripts beside this module (pdl_ptx.py,
moe_sm90.py) print JSON, and `run_script` runs one outside the interpreter and returns what it printed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BF16 = "*bf16"


def compile_sm90(fn, pointers: dict, ints=(), floats=(), constexprs=None, num_warps=4, pdl=False, ints16=()):
    """triton.compile of fn for sm_90: pointers {name: type} aligned as Triton specializes tensors, ints as
    i32 (ints16: i32 known to be multiples of 16, as Triton specializes such values), floats as fp32, every
    other argument a constexpr from `constexprs`."""
    fn = fn if hasattr(fn, "arg_names") else fn.fn  # under triton.heuristics
    signature, values, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton specializes aligned tensors
        elif name in ints or name in ints16:
            signature[name] = "i32"
            if name in ints16:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "constexpr"
            values[(i,)] = constexprs[name]
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=values, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "launch_pdl": pdl})


def run_script(name: str) -> dict:
    """Run tests/kernels/<name> with TRITON_INTERPRET=0 (the interpreter's kernels do not compile) and return
    the JSON of its last line."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name(name))], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
