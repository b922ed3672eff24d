"""The bench's peer run: transformers' continuous batching gives every request exactly its output length."""
from benchmarks.peer import transformers_continuous_batching
from tritium import SamplingParams


def test_peer_runs_each_request_to_its_length(tiny_checkpoint):
    prompts = [[1, 2, 3, 4], [5, 6, 7], list(range(30))]
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for n in (3, 7, 5)]
    tokens, seconds = transformers_continuous_batching(str(tiny_checkpoint), prompts, params, "cpu")
    assert tokens == 15 and seconds > 0
