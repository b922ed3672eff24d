"""Piecewise prefill graphs: the bucket ladder, and (CPU, nothing captured) the padded pieces with attention on
the real rows compute what the model's forward does on every prefill and mixed step."""
import torch
from hypothesis import given, strategies as st

from tritium import LLM, SamplingParams
from tritium.engine.piecewise import PiecewiseGraphs, token_buckets


@given(st.integers(1, 40000))
def test_buckets_ascend_to_the_maximum_and_pad_at_most_1_5x(max_tokens):
    buckets = token_buckets(max_tokens)
    assert buckets == sorted(set(buckets)) and buckets[-1] == max_tokens
    for lo, hi in zip(buckets, buckets[1:]):
        if lo >= 512:  # a step of lo + 1 tokens is padded to hi
            assert hi <= 1.5 * (lo + 1)


def _prompts(n, lo, hi):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 500, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_padded_pieces_equal_the_forward_on_every_prefill_step(tiny_checkpoint):
    """A chunked run (prefill-only and mixed steps, both buckets) through PiecewiseGraphs: each step's hidden
    states equal the model's forward on the same inputs, whatever the pad rows held before, and the tokens
    equal a run without it."""
    prompts = _prompts(5, 3, 40)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with LLM(tiny_checkpoint, max_num_batched_tokens=24, enforce_eager=True) as llm:
        plain = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    with LLM(tiny_checkpoint, max_num_batched_tokens=24, enforce_eager=True) as llm:
        runner = llm.runner
        pw = PiecewiseGraphs(runner.model.model, 24, runner.device, capture=False)
        assert pw.buckets == [16, 24]
        pieces_forward, steps = pw.forward, []

        def checked_forward(ids, positions, meta):
            pw.ids.random_(0, 500)  # stale pad rows from earlier steps must change nothing
            pw.positions.random_(0, 64)
            pw.o.normal_()
            hidden = pieces_forward(ids, positions, meta).clone()
            torch.testing.assert_close(hidden, runner.model(ids, positions, meta), rtol=1e-3, atol=1e-4)  # GEMM blocking differs with M
            steps.append((pw.bucket(len(ids)), meta.num_decodes > 0))
            return hidden

        pw.forward = checked_forward
        runner.piecewise = pw  # the runner takes it for every prefill and mixed step
        pieced = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert pieced == plain
    assert {b for b, _ in steps} == {16, 24} and {m for _, m in steps} == {False, True}, steps
