"""Work items of the persistent grids of sampling_bracket.py: a launch works on the rows in some phases, each
row cut into C fixed chunks; the items (row, G consecutive chunks) are dealt to a few programs per SM.

A cooperative launch (every program resident at once) runs several stages in one grid, separated by grid_sync;
its grid is sized by coresident_programs.

Rows are listed from a phase vector ([B, 4] int32 state, entry 0) that no program of the same launch writes,
so every program sees the same list. Phases: 0 bracket set, 1 partials written, 2 window gathered, 3 left
to the sequential draw (general_row), PHASE_DONE finished earlier (not pending).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritium.platform import INTERPRET

PROGRAMS_PER_SM = 4  # the persistent grid
INTERPRET_PROGRAMS = 4  # the interpreter's grid: its cost is per program
PHASE_DONE = tl.constexpr(4)  # rows finished by the candidate window (written by the finishing kernel)


@triton.jit
def phases(bi_ptr, B, BPAD: tl.constexpr):
    # [BPAD] every row's phase (bi [B, 4], entry 0; PHASE_DONE past B)
    b = tl.arange(0, BPAD)
    return tl.load(bi_ptr + b * 4, mask=b < B, other=PHASE_DONE)


@triton.jit
def rows_in_phase(ph, PH_MIN: tl.constexpr, PH_MAX: tl.constexpr, BPAD: tl.constexpr):
    """The rows whose phase (from phases) lies in [PH_MIN, PH_MAX]: (row ids, selected, rank among the
    selected, their number), from which items_per_row and item_chunks lay out the work items."""
    sel = (ph >= PH_MIN) & (ph <= PH_MAX)
    return tl.arange(0, BPAD), sel, tl.cumsum(sel.to(tl.int32), 0) - 1, tl.sum(sel.to(tl.int32))


@triton.jit
def items_per_row(n, C):
    """Work items for n rows of C chunks on this grid: G consecutive chunks per item, G the fewest that keep
    the items no more than the programs (one item each; with n above the grid, one row each in turn).
    Returns (items per row, G). The chunking itself never changes, only which program takes which chunk, so
    no sum depends on the batch."""
    per_row = tl.minimum(tl.maximum(tl.num_programs(0) // tl.maximum(n, 1), 1), C)
    g = (C + per_row - 1) // per_row
    return (C + g - 1) // g, g


@triton.jit
def selected_row(rows, sel, rank, j):
    """The id of the selected row of rank j (rows, sel, rank from rows_in_phase), int64."""
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


def programs(device, n_items: int) -> int:
    """The persistent grid: a few programs per SM (a few in all under the interpreter), never more than items."""
    if INTERPRET:
        return max(1, min(n_items, INTERPRET_PROGRAMS))
    return max(1, min(n_items, PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count))
