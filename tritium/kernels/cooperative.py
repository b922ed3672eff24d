"""Persistent and cooperative grids: a fixed grid of programs that take work items in turn, and the grid-wide
barrier that lets one cooperative launch (every program resident at once) run several dependent stages.

Work items: n rows of C chunks each are dealt as (row, chunks [c0, c1)) items, G consecutive chunks per item,
so that one row spreads over the whole grid and many rows give each program a few long items. The chunking
never changes with the grid, only which program takes which chunk, so no sum depends on the batch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.platform import INTERPRET

PROGRAMS_PER_SM = 4  # the persistent grid without a cooperative launch
INTERPRET_PROGRAMS = 4  # the interpreter's grid: its cost is per program


@triton.jit
def items_per_row(n, C):
    """Work items for n rows of C chunks on this grid: G consecutive chunks per item, G the fewest that keep
    the items no more than the programs (one item each; with n above the grid, one row each in turn).
    Returns (items per row, G)."""
    per_row = tl.minimum(tl.maximum(tl.num_programs(0) // tl.maximum(n, 1), 1), C)
    g = (C + per_row - 1) // per_row
    return (C + g - 1) // g, g


@triton.jit
def selected_row(rows, sel, rank, j):
    """The id of the selected row of rank j, int64 (rows: row ids; sel: which are selected; rank: each one's
    rank among the selected)."""
    return tl.sum(tl.where(sel & (rank == j), rows, 0)).to(tl.int64)


@triton.jit
def item_chunks(rows, sel, rank, item, per_row, g, C):
    """Work item `item`'s row (the selected row of rank item // per_row) and its chunks [c0, c1)."""
    row = selected_row(rows, sel, rank, item // per_row)
    c0 = item % per_row * g
    return row, c0, tl.minimum(c0 + g, C)


@triton.jit
def grid_sync(bar_ptr, target):
    """Wait until every program of a cooperative launch has arrived: bar_ptr (int32, zero at launch) counts
    arrivals, target = (syncs so far, this one included) * programs. Stores before it are visible after it
    (release on arrival, acquire while waiting; the CTA barriers order the program's other threads)."""
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release")
    while tl.atomic_add(bar_ptr, 0, sem="acquire") < target:
        pass
    tl.debug_barrier()


def programs(device, n_items: int) -> int:
    """The persistent grid: a few programs per SM (a few in all under the interpreter), never more than items."""
    if INTERPRET:
        return max(1, min(n_items, INTERPRET_PROGRAMS))
    return max(1, min(n_items, PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count))


def coresident_programs(compiled, device) -> int:
    """How many programs of a compiled kernel the whole GPU holds at once (registers, shared memory and
    threads per SM), the most a cooperative launch may have."""
    compiled._init_handles()
    props = torch.cuda.get_device_properties(device)
    warps = compiled.metadata.num_warps
    regs_per_warp = -(-compiled.n_regs * 32 // 256) * 256  # allocated per warp in units of 256
    # registers are split over the SM's 4 sub-partitions, each holding whole warps
    warps_per_sm = 4 * (props.regs_per_multiprocessor // 4 // regs_per_warp)
    per_sm = min(warps_per_sm // warps, props.max_threads_per_multi_processor // (32 * warps), 32)
    if compiled.metadata.shared:
        smem = -(-compiled.metadata.shared // 128) * 128 + 1024  # in units of 128 bytes, plus 1 KiB per block
        per_sm = min(per_sm, props.shared_memory_per_multiprocessor // smem)
    return max(1, per_sm) * props.multi_processor_count


def specialization(values) -> tuple:
    """What Triton compiles a launch for, beyond the constexprs: tensor dtypes and 16-byte alignment, ints equal
    to 1 or divisible by 16."""
    return tuple((v.dtype, v.data_ptr() % 16 == 0) if isinstance(v, torch.Tensor) else
                 (v == 1, v % 16 == 0) if isinstance(v, int) else None for v in values)
