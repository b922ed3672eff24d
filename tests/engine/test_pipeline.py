"""The engine's step pipeline: step N+1 is scheduled and launched before step N's sampled ids are read back,
and the tokens are those of the engine run without delays."""
import time

from tritium import LLM, SamplingParams


class DelayedTokens:
    """A step's ids that become readable only `delay` seconds after launch (a slow GPU)."""

    def __init__(self, inner, step, log, delay):
        self.inner, self.step, self.log = inner, step, log
        self.ready = time.perf_counter() + delay

    def tolist(self):
        time.sleep(max(0.0, self.ready - time.perf_counter()))
        self.log.append(("collect", self.step))
        return self.inner.tolist()


class SlowRunner:
    def __init__(self, runner, delay):
        self.runner, self.delay, self.log, self.steps = runner, delay, [], 0

    def launch(self, batch):
        tokens = self.runner.launch(batch)
        self.log.append(("launch", self.steps))
        self.steps += 1
        return DelayedTokens(tokens, self.steps - 1, self.log, self.delay)

    def close(self):
        self.runner.close()


def test_next_step_launches_before_the_previous_is_read_back(tiny_checkpoint):
    prompts = [[5, 17, 3, 99, 250], [7, 7, 7], list(range(40, 70))]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    with LLM(tiny_checkpoint, kvcache_block_size=16, max_num_batched_tokens=16) as llm:
        want = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
        slow = llm.runner = SlowRunner(llm.runner, delay=0.05)
        got = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    assert got == want
    order = slow.log
    assert slow.steps >= 7  # the 30-token prompt is chunked: mixed steps, then decodes
    for n in range(slow.steps - 1):
        assert order.index(("launch", n + 1)) < order.index(("collect", n)), f"step {n + 1} waited for step {n}"
    assert sorted(order) == sorted([("launch", n) for n in range(slow.steps)] +
                                   [("collect", n) for n in range(slow.steps)])


def test_warm_up_leaves_a_fresh_engine_that_gives_the_same_tokens(tiny_checkpoint):
    prompts = [[5, 17, 3, 99, 250], list(range(40, 70))]
    params = SamplingParams(temperature=0.7, max_tokens=5, ignore_eos=True)  # seeds drawn by the engine
    opts = dict(kvcache_block_size=16, max_num_batched_tokens=32, max_num_seqs=4, max_model_len=64)
    with LLM(tiny_checkpoint, **opts) as llm:
        want = [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]
    with LLM(tiny_checkpoint, **opts) as llm:
        llm.warm_up()
        assert llm.scheduler.block_manager.num_cache_hit_tokens == 0 and llm.stats["decode_tokens"] == 0
        assert [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)] == want
