"""Qwen3 on tritium kernels against transformers on the same synthetic checkpoint."""
import pytest
import torch

from tritium.model.attention import AttentionMetadata, allocate_kv_cache
from tritium.model.loader import load_model
from tritium.platform import DEVICE
from tensor_checks import rel_err

BLOCK = 16


def _prefill_meta(lens, cached, block_tables, device):
    """Metadata for computing tokens cached[b]..lens[b]-1 of each sequence (block_tables given per sequence)."""
    new = [n - c for n, c in zip(lens, cached)]
    slots, positions = [], []
    for b, (n, c) in enumerate(zip(lens, cached)):
        for p in range(c, n):
            slots.append(block_tables[b][p // BLOCK] * BLOCK + p % BLOCK)
            positions.append(p)
    width = max(len(t) for t in block_tables)
    table = torch.tensor([t + [-1] * (width - len(t)) for t in block_tables], dtype=torch.int32, device=device)
    cu = torch.tensor([0] + list(torch.tensor(new).cumsum(0)), dtype=torch.int32, device=device)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device), block_tables=table,
        cu_seqlens_q=cu, max_seqlen_q=max(new))
    return meta, torch.tensor(positions, dtype=torch.int64, device=device)


def _tables(lens):
    """Non-contiguous, shuffled physical blocks for each sequence."""
    need = [-(-n // BLOCK) for n in lens]
    perm = torch.randperm(sum(need) + 3).tolist()
    out, i = [], 0
    for k in need:
        out.append(perm[i:i + k])
        i += k
    return out, sum(need) + 3


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    ours = load_model(tiny_checkpoint, device=DEVICE, dtype=torch.float32)
    return ours, ref


def test_prefill_and_decode_logits_match_transformers(models):
    ours, ref = models
    vocab = ref.config.vocab_size
    lens = [5, 23, 17, 1]
    prompts = [torch.randint(0, vocab, (n,)) for n in lens]
    tables, nblocks = _tables([n + 1 for n in lens])
    allocate_kv_cache(ours, nblocks, BLOCK, torch.float32, DEVICE)

    meta, pos = _prefill_meta(lens, [0] * len(lens), tables, DEVICE)
    with torch.no_grad():
        hidden = ours(torch.cat(prompts).to(DEVICE), pos, meta)
        last = meta.cu_seqlens_q[1:].long() - 1
        logits = ours.compute_logits(hidden[last])
        for b, p in enumerate(prompts):
            want = ref(p[None]).logits[0, -1]
            assert rel_err(logits[b].cpu(), want) <= 1e-4

    # One decode step: each sequence's next token at position len.
    nxt = torch.randint(0, vocab, (len(lens),))
    slots = [tables[b][n // BLOCK] * BLOCK + n % BLOCK for b, n in enumerate(lens)]
    dmeta = AttentionMetadata(
        num_decodes=len(lens), slot_mapping=torch.tensor(slots, device=DEVICE),
        seq_lens=torch.tensor([n + 1 for n in lens], dtype=torch.int32, device=DEVICE),
        block_tables=meta.block_tables)
    with torch.no_grad():
        hidden = ours(nxt.to(DEVICE), torch.tensor(lens, device=DEVICE), dmeta)
        logits = ours.compute_logits(hidden)
        for b, p in enumerate(prompts):
            want = ref(torch.cat([p, nxt[b:b + 1]])[None]).logits[0, -1]
            assert rel_err(logits[b].cpu(), want) <= 1e-4


def test_chunked_prefill_over_a_cached_prefix_matches_one_shot(models):
    ours, ref = models
    n, cut = 40, 19
    prompt = torch.randint(0, ref.config.vocab_size, (n,))
    tables, nblocks = _tables([n])
    allocate_kv_cache(ours, nblocks, BLOCK, torch.float32, DEVICE)
    with torch.no_grad():
        meta, pos = _prefill_meta([cut], [0], tables, DEVICE)
        ours(prompt[:cut].to(DEVICE), pos, meta)
        meta, pos = _prefill_meta([n], [cut], tables, DEVICE)
        hidden = ours(prompt[cut:].to(DEVICE), pos, meta)
        logits = ours.compute_logits(hidden).cpu()
        want = ref(prompt[None]).logits[0, cut:]
    assert rel_err(logits, want) <= 1e-4
    assert torch.equal(logits.argmax(-1), want.argmax(-1))


@pytest.mark.gpu
def test_qwen3_06b_bf16_matches_transformers_fp32():
    from transformers import AutoModelForCausalLM

    from tritium.model.synthetic import ensure_checkpoint

    path = ensure_checkpoint("qwen3-0.6b")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    ours = load_model(path, device="cuda", dtype=torch.bfloat16)
    lens = [300, 77, 1024, 5]
    prompts = [torch.randint(0, ref.config.vocab_size, (n,)) for n in lens]
    tables, nblocks = _tables(lens)
    allocate_kv_cache(ours, nblocks, BLOCK, torch.bfloat16, "cuda")
    meta, pos = _prefill_meta(lens, [0] * len(lens), tables, "cuda")
    with torch.no_grad():
        hidden = ours(torch.cat(prompts).cuda(), pos, meta)
        logits = ours.compute_logits(hidden).float()
        want = torch.cat([ref(p[None].cuda()).logits[0] for p in prompts])
    assert rel_err(logits, want) <= 3e-2
    top2 = want.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.25  # margins above the bf16 error of the logits
    agree = (logits.argmax(-1) == want.argmax(-1))[clear].float().mean().item()
    assert clear.float().mean() > 0.5 and agree >= 0.99, (clear.float().mean().item(), agree)
