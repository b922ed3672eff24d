"""The engine on a GPU at Qwen3-0.6B shapes (bf16): CUDA graphs change nothing, the bench workload completes."""
import pytest
import torch

from tritium import LLM, SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def checkpoint():
    from tritium.model.synthetic import ensure_checkpoint

    return ensure_checkpoint("qwen3-0.6b")


def _prompts(n, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 10000, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_cuda_graph_decode_gives_the_eager_tokens(checkpoint):
    """Every decode step: the captured graph and the same padded batch run eagerly give bit-identical hidden
    states; and the tokens of a whole run match an engine with graphs off wherever no bf16 near-tie intervenes."""
    prompts = _prompts(24, 5, 300)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    with LLM(checkpoint, max_model_len=1024, max_num_seqs=64) as llm:
        assert llm.runner.graphs, "decode graphs were captured"
        ids = [llm.add_request(p, params) for p in prompts]
        decode_steps = 0
        while not llm.is_finished():
            batch = llm.scheduler.schedule()
            if not batch.is_prefill:
                x = batch.inputs()
                graphed = llm.runner._decode(x).clone()
                eager = llm.runner._decode(x, eager=True).clone()  # rewrites the same K/V to the same slots
                assert torch.equal(graphed, eager)
                decode_steps += 1
            llm.scheduler.postprocess(batch, llm.runner.run(batch))
        assert decode_steps >= 31
        graphed_tokens = [llm.result(i)["token_ids"] for i in ids]
        # Seeded sampling: the same tokens whatever the batch order (graph rows move).
        sampled = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, ignore_eos=True, seed=7)
        first = llm.generate(prompts[:5], sampled, use_tqdm=False)
        again = llm.generate(prompts[:5][::-1], sampled, use_tqdm=False)[::-1]
        assert [o["token_ids"] for o in first] == [o["token_ids"] for o in again]
    with LLM(checkpoint, enforce_eager=True, max_model_len=1024) as llm:
        eager_tokens = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    # Unpadded eager batches split the KV differently (other rounding), so a later near-tie may flip; the first
    # token comes from the same prefill path in both and must agree.
    assert [t[:1] for t in graphed_tokens] == [t[:1] for t in eager_tokens]
    assert sum(a == b for a, b in zip(graphed_tokens, eager_tokens)) >= len(prompts) // 2


def test_reference_bench_workload_runs_to_completion(checkpoint):
    from random import randint, seed

    seed(0)
    prompts = [[randint(0, 10000) for _ in range(randint(100, 1024))] for _ in range(256)]
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=randint(100, 1024)) for _ in range(256)]
    assert sum(map(len, prompts)) == 142827 and sum(p.max_tokens for p in params) == 133966
    with LLM(checkpoint, max_model_len=4096) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o["token_ids"]) for o in outs] == [p.max_tokens for p in params]
