"""The bench timeline: one row per engine step, covering every prompt token once and every output token."""
from benchmarks.timeline import summary, timed_steps
from tritium import LLM, SamplingParams


def test_timeline_rows_cover_the_run(tiny_checkpoint):
    prompts = [list(range(1, 20)), list(range(40, 47)), list(range(100, 133))]
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for n in (4, 6, 3)]
    with LLM(str(tiny_checkpoint), max_model_len=128, kvcache_block_size=16, enforce_eager=True) as llm:
        ids = [llm.add_request(p, sp) for p, sp in zip(prompts, params)]
        rows = timed_steps(llm)
        outs = [llm.result(i) for i in ids]
    assert [len(o["token_ids"]) for o in outs] == [4, 6, 3]
    assert sum(r["tokens"] - r["decodes"] for r in rows) == sum(map(len, prompts))  # prefilled once each
    assert sum(r["decodes"] for r in rows) >= 4 + 6 + 3 - len(prompts)  # each later token is a decode row
    assert all(0 <= r["wait_s"] <= r["step_s"] for r in rows)
    table = summary(rows)
    assert table[1] == "decode" and any(line.strip().startswith("1-8") for line in table)
