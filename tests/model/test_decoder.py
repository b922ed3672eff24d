"""Every architecture (Qwen3, Qwen2, Llama, Mistral, Phi-3, Qwen3-MoE, Qwen2-MoE, Mixtral) on tritium kernels
against transformers on the same synthetic checkpoint."""
import json

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


def _decode_meta(lens, block_tables, table, device):
    """Metadata for one decode step of sequences holding lens[b] tokens: each new token at position lens[b]
    (block_tables per sequence, table their padded tensor)."""
    slots = [block_tables[b][n // BLOCK] * BLOCK + n % BLOCK for b, n in enumerate(lens)]
    return AttentionMetadata(
        num_decodes=len(lens), slot_mapping=torch.tensor(slots, device=device),
        seq_lens=torch.tensor([n + 1 for n in lens], dtype=torch.int32, device=device), block_tables=table)


def _tables(lens):
    """Non-contiguous, shuffled physical blocks for each sequence."""
    need = [-(-n // BLOCK) for n in lens]
    perm = torch.randperm(sum(need) + 3).tolist()
    out, i = [], 0
    for k in need:
        out.append(perm[i:i + k])
        i += k
    return out, sum(need) + 3


@pytest.fixture(scope="module", params=["tiny", "qwen2-tiny", "llama-tiny", "qwen3-moe-tiny", "mistral-tiny",
                                                 "mixtral-tiny", "qwen2-moe-tiny", "phi3-tiny"])
def models(request):
    from transformers import AutoModelForCausalLM

    from tritium.model.synthetic import ensure_checkpoint

    path = ensure_checkpoint(request.param)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = load_model(path, device=DEVICE, dtype=torch.float32)
    assert type(ours).__name__ == type(ref).__name__  # the architecture config.json names
    return ours, ref


def _few_rows_anywhere(x):
    """layers.few_rows without its CUDA condition and up to the kernel's limit: the few-row path runs on the CPU."""
    from tritium.kernels.skinny_linear import MAX_ROWS

    return x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and x.stride(1) == 1


@pytest.mark.parametrize("few_row_kernel", [False, True], ids=["as-is", "few-row-kernel"])
def test_prefill_and_decode_logits_match_transformers(models, few_row_kernel, monkeypatch):
    """With few_row_kernel the decode step's 4 rows take the few-row kernel's path (norm, SiLU-and-mul and the
    residual adds fused into the projections), through the interpreter on the CPU."""
    if few_row_kernel:
        monkeypatch.setattr("tritium.model.layers.few_rows", _few_rows_anywhere)
        monkeypatch.setattr("tritium.model.decoder.few_rows", _few_rows_anywhere)
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
    dmeta = _decode_meta(lens, tables, meta.block_tables, DEVICE)
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


@pytest.mark.parametrize("preset", ["llama-tiny", "llama-3.2-1b"])
def test_llama3_rope_table_is_transformers(preset, tmp_path):
    """Llama 3.1's rescaled frequencies (all three bands) give transformers' cos/sin at every position."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from tritium.kernels.rope import rope_cos_sin, rope_inv_freq
    from tritium.model.decoder import model_inv_freq
    from tritium.model.synthetic import make_config

    (tmp_path / "config.json").write_text(json.dumps(make_config(preset)))  # the config alone, no weights
    cfg = AutoConfig.from_pretrained(tmp_path)
    d, params = cfg.head_dim, cfg.rope_parameters
    plain = rope_inv_freq(d, params["rope_theta"])
    wavelen, original = 2 * torch.pi / plain, params["original_max_position_embeddings"]
    # slowed, blended and kept bands all present, so each branch of the rescaling is checked
    assert (wavelen > original).any() and (wavelen < original / 4).any()
    assert ((wavelen <= original) & (wavelen >= original / 4)).any()
    table = rope_cos_sin(d, cfg.max_position_embeddings, params["rope_theta"], inv_freq=model_inv_freq(cfg, d))
    pos = torch.tensor([0, 1, 5, 100, 255, 1000, cfg.max_position_embeddings - 1])
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1), pos[None])
    assert torch.allclose(table[pos, : d // 2], cos[0, :, : d // 2], atol=1e-6)
    assert torch.allclose(table[pos, d // 2:], sin[0, :, d // 2:], atol=1e-6)
    assert not torch.allclose(table[pos], rope_cos_sin(d, cfg.max_position_embeddings, params["rope_theta"])[pos])


def test_unsupported_variants_are_named(tmp_path):
    from tritium.model.loader import load_hf_config
    from tritium.model.synthetic import make_config

    cases = [("llama-tiny", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'.*'llama3'"),
             ("qwen2-tiny", {"use_sliding_window": True, "sliding_window": 64}, "sliding"),
             ("tiny", {"architectures": ["GPT2LMHeadModel"]}, "unsupported architectures.*LlamaForCausalLM.*Qwen2")]
    for preset, change, match in cases:
        (tmp_path / "config.json").write_text(json.dumps({**make_config(preset), **change}))
        with pytest.raises(ValueError, match=match):
            load_hf_config(tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["qwen3-0.6b", "qwen2.5-0.5b", "llama-3.2-1b", "qwen3-moe-small"])
def test_bf16_at_real_shapes_matches_transformers_fp32(preset):
    """Logits within 3e-2 of transformers in fp32, or within 1.5x transformers' own bf16 error where that is
    larger (an MoE router's near-tied experts swap under bf16 rounding, in transformers too)."""
    from transformers import AutoModelForCausalLM

    from tritium.model.synthetic import ensure_checkpoint

    path = ensure_checkpoint(preset)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    ref_bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    ours = load_model(path, device="cuda", dtype=torch.bfloat16)

    def bound(inputs, want):
        with torch.no_grad():
            theirs = torch.cat([ref_bf16(x[None].cuda()).logits[0, -len(w):].float() for x, w in zip(inputs, want)])
        return max(3e-2, 1.5 * rel_err(theirs, torch.cat(want)))

    lens = [300, 77, 1024, 5]
    prompts = [torch.randint(0, ref.config.vocab_size, (n,)) for n in lens]
    tables, nblocks = _tables([n + 1 for n in lens])
    allocate_kv_cache(ours, nblocks, BLOCK, torch.bfloat16, "cuda")
    meta, pos = _prefill_meta(lens, [0] * len(lens), tables, "cuda")
    with torch.no_grad():
        hidden = ours(torch.cat(prompts).cuda(), pos, meta)
        logits = ours.compute_logits(hidden).float()
        wants = [ref(p[None].cuda()).logits[0] for p in prompts]
    want = torch.cat(wants)
    assert rel_err(logits, want) <= bound(prompts, wants)
    top2 = want.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.25  # margins above the bf16 error of the logits
    agree = (logits.argmax(-1) == want.argmax(-1))[clear].float().mean().item()
    assert clear.float().mean() > 0.5 and agree >= 0.99, (clear.float().mean().item(), agree)

    # A decode step of the first two sequences: 2 rows take the few-row path (layers.FEW_ROWS).
    nxt = torch.randint(0, ref.config.vocab_size, (2,))
    dmeta = _decode_meta(lens[:2], tables, meta.block_tables[:2], "cuda")
    with torch.no_grad():
        logits = ours.compute_logits(ours(nxt.cuda(), torch.tensor(lens[:2], device="cuda"), dmeta)).float()
        longer = [torch.cat([p, nxt[b:b + 1]]) for b, p in enumerate(prompts[:2])]
        wants = [ref(x[None].cuda()).logits[0, -1:] for x in longer]
    assert rel_err(logits, torch.cat(wants)) <= bound(longer, wants)


def test_sparse_layers_are_the_ones_transformers_builds():
    """decoder_sparse_step and mlp_only_layers pick the same MoE layers as transformers' Qwen3-MoE."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from tritium.model.moe import is_moe_layer

    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2, mlp_only_layers=[3])
    theirs = ["Sparse" in type(layer.mlp).__name__ for layer in Qwen3MoeForCausalLM(cfg).model.layers]
    assert theirs == [is_moe_layer(cfg, i) for i in range(6)] == [False, True, False, False, False, True]
