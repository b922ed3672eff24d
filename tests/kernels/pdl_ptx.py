"""Compiles the PDL variants of the decode step's kernels for sm_90 (no GPU needed: Triton compiles for a named
target) and prints, as JSON, each kernel's global loads before and after its griddepcontrol.wait in the PTX.
Run with TRITON_INTERPRET=0 (test_pdl.py does, in a subprocess: the interpreter's kernels do not compile)."""
import importlib
import json

from sm90 import BF16, compile_sm90


def loads_around_wait(fn, pointers: dict, ints=(), floats=(), constexprs=None, num_warps=4) -> dict:
    """{'waits', 'before', 'after'}: griddepcontrol.wait count and the ld.global lines before / after the first."""
    kernel = compile_sm90(fn, pointers, ints, floats, constexprs, num_warps, pdl=True)
    lines = kernel.asm["ptx"].splitlines()
    waits = [i for i, line in enumerate(lines) if "griddepcontrol.wait" in line]
    loads = [i for i, line in enumerate(lines) if "ld.global" in line]
    first = waits[0] if waits else len(lines)
    return {"waits": len(waits), "before": sum(i < first for i in loads), "after": sum(i > first for i in loads)}


def main() -> None:
    skinny = importlib.import_module("tritium.kernels.skinny_linear")
    decode = importlib.import_module("tritium.kernels.decode_attention")
    rope = importlib.import_module("tritium.kernels.rope")
    out = {
        # gated down projection of 0.6B at one row: [8, 1024] bf16 W tiles, 4 warps -> 8 x 16-byte loads a chunk
        "skinny_linear": loads_around_wait(
            skinny._skinny_linear_kernel, dict(x_ptr=BF16, w_ptr=BF16, y_ptr=BF16, bias_ptr=BF16, norm_ptr=BF16),
            ints=("M", "stride_xm", "stride_ym"),
            constexprs=dict(N=1024, K=3072, EPS=1e-6, HAS_BIAS=False, GATED=True, NORM=False, ACCUMULATE=True,
                            BLOCK_M=1, BLOCK_N=8, ELEMS=8192, BLOCK_K=1024, EVEN=True, PDL=True)),
        "decode_split": loads_around_wait(
            decode._decode_split_kernel, dict(q_ptr=BF16, k_ptr=BF16, v_ptr=BF16, out_ptr=BF16, mid_o_ptr="*fp32",
                                              mid_lse_ptr="*fp32", seq_lens_ptr="*i32", bt_ptr="*i32"),
            ints=("stride_qb", "stride_qh", "stride_kb", "stride_kt", "stride_kh", "stride_ob", "stride_oh",
                  "stride_bt", "ctx_bucket"), floats=("qk_scale",),
            constexprs=dict(GROUP=2, GROUP_PAD=2, DOT_ROWS=16, HEAD_DIM=128, KV_BLOCK_SIZE=256, NUM_SPLITS=16,
                            PRECISION="tf32", BLOCK_N=64, USE_DOT=True, PDL=True)),
        "decode_merge": loads_around_wait(
            decode._decode_merge_kernel, dict(mid_o_ptr="*fp32", mid_lse_ptr="*fp32", out_ptr=BF16),
            ints=("stride_ob", "stride_oh"), constexprs=dict(NUM_SPLITS=16, SPLITS_PAD=16, HEAD_DIM=128, PDL=True)),
        "rope": loads_around_wait(
            rope._rope_kernel, dict(q_ptr=BF16, k_ptr=BF16, qw_ptr=BF16, kw_ptr=BF16, pos_ptr="*i64", cs_ptr="*fp32",
                                    v_ptr=BF16, kc_ptr=BF16, vc_ptr=BF16, slot_ptr="*i64"),
            ints=("n_slots", "stride_vt", "stride_vh", "stride_kcb", "stride_kcs", "stride_kch", "stride_vcb",
                  "stride_vcs", "stride_vch", "n_tokens", "tokens_bucket", "n_q_heads", "n_kv_heads", "max_pos",
                  "stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_cs"), floats=("eps",),
            constexprs=dict(NORM=True, STORE=True, BLOCK_SIZE=256, HALF=64, HALF_P2=64, BLOCK_HQ=16, BLOCK_HK=8,
                            BLOCK_T=1, PDL=True)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
