"""Compiles the MoE kernels for sm_90 at Qwen3-30B-A3B's shapes (no GPU needed, see sm90.py) and prints, as
JSON, each one's registers and spills. Run with TRITON_INTERPRET=0 (test_moe.py does, in a subprocess)."""
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from sm90 import BF16, compile_sm90

from tritium.kernels import moe, moe_routing

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def _stats(kernel) -> dict:
    """Registers, spill bytes (stores + loads) and shared memory, from ptxas -v on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(kernel.asm["ptx"])
        log = subprocess.run([str(PTXAS), "-v", "--gpu-name", "sm_90a", str(ptx), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True).stderr
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return {"regs": int(re.search(r"Used (\d+) registers", log).group(1)), "spills": spills,
            "shared": kernel.metadata.shared}


def _gemm(config, **constexprs) -> dict:
    kernel = compile_sm90(
        moe._moe_gemm_kernel, dict(a_ptr=BF16, w_ptr=BF16, c_ptr=BF16, pairs_ptr="*i32", block_expert_ptr="*i32",
                                   row_weight_ptr="*fp32"),
        ints=("num_pairs", "rows_bucket"), ints16=("stride_a", "stride_we", "stride_wn", "stride_c"),
        constexprs=dict(TOPK=8, PRECISION="tf32", EVEN_K=True, **constexprs, **config.kwargs),
        num_warps=config.num_warps)
    return _stats(kernel)


def main() -> None:
    out = {}
    for i, config in enumerate(moe.CONFIGS):
        for block_m in (16, 64):
            out[f"gate_up config {i} BLOCK_M {block_m}"] = _gemm(
                config, N=1536, K=2048, A_BY_TOKEN=True, ROW_WEIGHT=False, GATED=False, BLOCK_M=block_m)
            out[f"down config {i} BLOCK_M {block_m}"] = _gemm(
                config, N=2048, K=768, A_BY_TOKEN=False, ROW_WEIGHT=True, GATED=True, BLOCK_M=block_m)
    out["route"] = _stats(compile_sm90(
        moe_routing._route_kernel, dict(logits_ptr=BF16, weights_ptr="*fp32", ids_ptr="*i32"), ints16=("stride_l",),
        constexprs=dict(E=128, E_PAD=128, K=8, K_PAD=8, RENORMALIZE=True)))
    out["align"] = _stats(compile_sm90(
        moe_routing._align_kernel, dict(ids_ptr="*i32", sorted_ptr="*i32", block_expert_ptr="*i32"),
        ints=("num_pairs", "num_rows"),
        constexprs=dict(E=128, E_PAD=128, BLOCK_M=16, CHUNK=moe_routing.CHUNK, ROWS=moe_routing.ROWS),
        num_warps=8))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
