"""End to end on the CPU: tritium's greedy tokens equal a transformers greedy loop on the same checkpoint,
however the engine batches, caches, chunks or preempts."""
import pytest
import torch

from tritium import LLM, SamplingParams
from hf_reference import greedy_ref

NEW = 32
LENS = [1, 7, 16, 21, 33, 45]


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 1000, (36,), generator=g).tolist()
    plain = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in LENS]
    prefixed = [shared + torch.randint(0, 1000, (k,), generator=g).tolist() for k in (3, 9, 14)]
    return plain + prefixed


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, prompts):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    return [greedy_ref(model, p, NEW) for p in prompts]


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)


@pytest.mark.parametrize("options", [
    dict(),
    dict(enable_prefix_caching=False),
    dict(max_num_batched_tokens=24),  # prompts are chunked over several prefill steps
    dict(num_kvcache_blocks=10),  # 10 x 16 tokens for 9 requests: preemption must happen
], ids=["batched", "no-prefix-cache", "chunked-prefill", "tiny-cache-preempts"])
def test_greedy_matches_transformers(tiny_checkpoint, prompts, reference, options):
    with LLM(tiny_checkpoint, kvcache_block_size=16, **options) as llm:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        assert [o["token_ids"] for o in outs] == reference
        if "num_kvcache_blocks" in options:
            assert llm.scheduler.num_preemptions > 0


@pytest.mark.parametrize("preset", ["qwen2-tiny", "llama-tiny", "qwen3-moe-tiny", "mistral-tiny", "mixtral-tiny",
                                    "qwen2-moe-tiny", "phi3-tiny"])
def test_other_architectures_match_transformers_in_a_batch(preset, prompts):
    from transformers import AutoModelForCausalLM

    from tritium.model.synthetic import ensure_checkpoint

    path = ensure_checkpoint(preset)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with LLM(path, kvcache_block_size=16) as llm:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o["token_ids"] for o in outs] == [greedy_ref(model, p, NEW) for p in prompts]


def test_mistral_sliding_window_caps_the_context():
    """Within its window Mistral attends to everything, as the kernels do: the window caps max_model_len, and
    a prompt longer than it is refused before anything is queued."""
    from tritium.model.synthetic import ensure_checkpoint

    with LLM(ensure_checkpoint("mistral-tiny"), kvcache_block_size=16, max_model_len=4096) as llm:
        assert llm.config.max_model_len == 512  # the preset's sliding_window
        with pytest.raises(ValueError, match="512"):
            llm.generate([[1] * 600], GREEDY, use_tqdm=False)
        assert llm.is_finished()


def test_one_at_a_time_and_cache_hits_on_repeat(tiny_checkpoint, prompts, reference):
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        for p, want in zip(prompts[-3:], reference[-3:]):
            assert llm.generate([p], GREEDY, use_tqdm=False)[0]["token_ids"] == want
        # The later prompts found the shared 32-token prefix (two full blocks) in the cache.
        assert llm.scheduler.block_manager.num_cache_hit_tokens >= 2 * 32
        # Same prompt again: served from the prefix cache, same tokens.
        hits = llm.scheduler.block_manager.num_cache_hit_tokens
        assert llm.generate([prompts[-1]], GREEDY, use_tqdm=False)[0]["token_ids"] == reference[-1]
        assert llm.scheduler.block_manager.num_cache_hit_tokens - hits >= 32


def test_stop_tokens_and_max_tokens_end_exactly(tiny_checkpoint, prompts, reference):
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        ref = reference[3]
        stop = ref[10]
        first = ref.index(stop)
        out = llm.generate([prompts[3]], SamplingParams(temperature=0, max_tokens=NEW, stop_token_ids=[stop]),
                           use_tqdm=False)[0]
        assert out["token_ids"] == ref[: first + 1] and out["finish_reason"] == "stop"
        out = llm.generate([prompts[3]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
                           use_tqdm=False)[0]
        assert out["token_ids"] == ref[:5] and out["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible_across_batch_layouts(tiny_checkpoint, prompts):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, ignore_eos=True, seed=1234)
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        alone = llm.generate([prompts[2]], params, use_tqdm=False)[0]["token_ids"]
        others = SamplingParams(temperature=0.8, max_tokens=12, ignore_eos=True)
        batch = llm.generate([prompts[4], prompts[2], prompts[0]], [others, params, others], use_tqdm=False)
        assert batch[1]["token_ids"] == alone
        other_seed = llm.generate([prompts[2]], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12,
                                                               ignore_eos=True, seed=99), use_tqdm=False)
        assert other_seed[0]["token_ids"] != alone


def test_bad_input_is_rejected_before_queueing(tiny_checkpoint, prompts, reference):
    with LLM(tiny_checkpoint, kvcache_block_size=16, max_model_len=128) as llm:
        good = prompts[1]
        with pytest.raises(ValueError, match="empty prompt"):
            llm.generate([good, []], GREEDY, use_tqdm=False)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            llm.generate([[5, 10**6]], GREEDY, use_tqdm=False)
        with pytest.raises(ValueError, match="exceeds max_model_len"):
            llm.generate([good, list(range(120))], GREEDY, use_tqdm=False)
        with pytest.raises(ValueError, match="sampling params"):
            llm.generate([good, good], [GREEDY], use_tqdm=False)
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(temperature=-1)
        assert llm.is_finished()  # nothing from the rejected calls was queued
        assert llm.generate([good], GREEDY, use_tqdm=False)[0]["token_ids"] == reference[1]


def test_bad_engine_options(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown engine option.*max_num_seq.*valid options"):
        LLM(tiny_checkpoint, max_num_seq=4)
    with pytest.raises(ValueError, match="does not exist"):
        LLM(tmp_path / "missing")


def test_a_failed_step_or_an_abandoned_stream_leaves_nothing_queued(tiny_checkpoint, prompts, reference,
                                                                    monkeypatch):
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        free = llm.scheduler.block_manager.num_free_blocks
        real = llm.runner.launch
        calls = []

        def failing_third(batch):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("step failed")
            return real(batch)

        monkeypatch.setattr(llm.runner, "launch", failing_third)
        with pytest.raises(RuntimeError, match="step failed"):
            llm.generate(prompts[:3], GREEDY, use_tqdm=False)
        assert llm.scheduler.is_finished() and llm.scheduler.block_manager.num_free_blocks == free
        monkeypatch.setattr(llm.runner, "launch", real)
        events = llm.stream(prompts[:2], GREEDY)
        next(events)
        events.close()  # the consumer walks away after one token
        assert llm.scheduler.is_finished() and llm.scheduler.block_manager.num_free_blocks == free
        assert [o["token_ids"] for o in llm.generate(prompts[:3], GREEDY, use_tqdm=False)] == reference[:3]


def test_incremental_api_stream_and_chat(tiny_checkpoint, prompts, reference):
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        sid = llm.add_request(prompts[2], GREEDY)
        got = []
        while not llm.is_finished():
            got += [o.token_id for o in llm.step() if o.seq_id == sid]
        assert got == reference[2]
        events = list(llm.stream([prompts[1], prompts[3]], SamplingParams(temperature=0, max_tokens=6,
                                                                           ignore_eos=True)))
        for i, want in ((0, reference[1][:6]), (1, reference[3][:6])):
            mine = [e for e in events if e["index"] == i]
            assert [e["token_id"] for e in mine] == want and [e["finished"] for e in mine] == [False] * 5 + [True]
        chat = llm.chat([{"role": "user", "content": "Hello!"}], SamplingParams(temperature=0, max_tokens=4),
                        use_tqdm=False)
        templ = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=False,
                                                  add_generation_prompt=True)
        ids = llm.tokenizer.encode(templ, add_special_tokens=False)  # the template wrote the special tokens
        direct = llm.generate([ids], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
        assert chat[0]["token_ids"] == direct[0]["token_ids"] and len(chat[0]["token_ids"]) >= 1


def test_text_prompts_get_the_tokenizers_special_tokens_chat_prompts_only_the_templates(tiny_checkpoint,
                                                                                         monkeypatch):
    """A Llama tokenizer prepends BOS to text; a chat template writes its own, so none may be added twice."""
    with LLM(tiny_checkpoint, kvcache_block_size=16) as llm:
        real, flags = llm.tokenizer.encode, []
        monkeypatch.setattr(llm.tokenizer, "encode",
                            lambda text, **kw: flags.append(kw.get("add_special_tokens", True)) or real(text, **kw))
        assert llm.encode_prompt("Hello there") == real("Hello there")
        llm.chat_prompt([{"role": "user", "content": "Hello there"}])
        assert flags == [True, False]
