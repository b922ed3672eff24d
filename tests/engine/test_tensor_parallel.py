"""Tensor parallelism on the CPU: two processes over gloo, each running its shard through the interpreter.
TP=2 gives transformers' greedy tokens however the engine batches; a dead worker fails generate quickly;
nothing outlives the engine."""
import multiprocessing as mp
import threading
import time

import pytest
import torch
import torch.distributed as dist

from tritium import LLM, SamplingParams
from tritium.model.synthetic import ensure_checkpoint
from hf_reference import greedy_ref

NEW = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)


def _prompts():
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(0, 1000, (20,), generator=g).tolist()
    return [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (1, 9, 30)] + [shared + [5], shared + [6, 7]]


def _nothing_left():
    assert mp.active_children() == [] and not dist.is_initialized()


@pytest.mark.parametrize("preset,options", [
    ("tiny", dict()),
    ("tiny", dict(tensor_parallel_size=4)),  # one query head per rank, each KV head on two ranks
    ("tiny", dict(max_num_batched_tokens=16, num_kvcache_blocks=6)),  # chunked prefill and preemption
    ("qwen2-tiny", dict()),  # biases split with their rows
    ("llama-tiny", dict()),  # one KV head, replicated on both ranks
    ("qwen2-moe-tiny", dict()),  # every expert cut along its width, router and shared gate replicated
    ("phi3-tiny", dict()),  # packed qkv / gate_up checkpoint tensors split, then cut per rank
], ids=["batched", "tp4", "chunked-preempting", "qwen2", "llama-replicated-kv", "qwen2-moe", "phi3-packed"])
def test_tp_greedy_matches_transformers(preset, options):
    from transformers import AutoModelForCausalLM

    path = ensure_checkpoint(preset)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = _prompts()
    with LLM(path, kvcache_block_size=16, **{"tensor_parallel_size": 2, **options}) as llm:
        got = [o["token_ids"] for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
        if "num_kvcache_blocks" in options:
            assert llm.scheduler.num_preemptions > 0
    assert got == [greedy_ref(model, p, NEW) for p in prompts]
    _nothing_left()


def test_bad_sizes_are_refused_before_any_process_starts():
    with pytest.raises(ValueError, match=r"tensor_parallel_size=3 must divide the model's num_attention_heads \(4\)"):
        LLM(ensure_checkpoint("tiny"), tensor_parallel_size=3)
    with pytest.raises(ValueError, match=r"num_key_value_heads \(2\): one must divide the other"):
        LLM(ensure_checkpoint("qwen2-tiny"), tensor_parallel_size=3)
    from types import SimpleNamespace

    from tritium.engine.executor import check_tensor_parallel

    moe = SimpleNamespace(num_attention_heads=4, intermediate_size=256, num_key_value_heads=2,
                          moe_intermediate_size=30)  # every expert is cut along its width too
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 must divide the model's moe_intermediate_size"):
        check_tensor_parallel(moe, 4, one_host=False)
    check_tensor_parallel(moe, 2, one_host=False)
    _nothing_left()


def test_a_killed_worker_fails_generate_quickly_and_leaves_nothing():
    llm = LLM(ensure_checkpoint("tiny"), kvcache_block_size=16, tensor_parallel_size=2)
    threading.Timer(1.0, llm.runner.workers[0].kill).start()  # in the middle of decoding
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        llm.generate([[1, 2, 3]] * 4, SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True),
                     use_tqdm=False)
    assert time.monotonic() - start < 30
    with pytest.raises(RuntimeError, match="worker|part-way"):  # and it stays an error, not a hang
        llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)
    llm.exit()
    _nothing_left()


def test_a_step_failing_on_rank_0_ends_the_engine_instead_of_desynchronising_it(monkeypatch):
    llm = LLM(ensure_checkpoint("tiny"), kvcache_block_size=16, tensor_parallel_size=2)

    def fails(plan):  # after the workers got the plan: they are inside the step, rank 0 is not
        raise RuntimeError("rank 0 failed")

    monkeypatch.setattr(llm.runner.runner, "execute", fails)
    with pytest.raises(RuntimeError, match="rank 0 failed"):
        llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="part-way"):
        llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)
    assert time.monotonic() - start < 30
    llm.exit()
    _nothing_left()


def test_create_and_exit_five_times_leaks_nothing():
    path = ensure_checkpoint("tiny")
    for _ in range(5):
        with LLM(path, kvcache_block_size=16, tensor_parallel_size=2) as llm:
            assert len(llm.generate([[4, 5, 6]], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)) == 1
        _nothing_left()


def test_torchrun_ranks_run_the_same_script(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from engine.torchrun_generate import PROMPTS
    from tritium.distributed import free_port

    path = ensure_checkpoint("tiny")
    script = Path(__file__).with_name("torchrun_generate.py")
    out = tmp_path / "tokens.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(script), str(path), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    with LLM(path, kvcache_block_size=16) as llm:
        want = [o["token_ids"] for o in llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10,
                                                                              ignore_eos=True), use_tqdm=False)]
    assert json.loads(out.read_text()) == want
