"""The peer of bench.py: transformers' own continuous batching (paged attention over SDPA) on the same
checkpoint, prompts and per-request output lengths, timed like tritium's generate (after loading)."""
import time

import torch


def transformers_continuous_batching(model_dir: str, prompts, params, device: str) -> tuple[int, float]:
    """(output tokens, seconds) for the requests; EOS is disabled, as bench.py's requests ignore it."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="paged|sdpa")
    model = model.to(device).eval()
    temperature = params[0].temperature
    if any(p.temperature != temperature for p in params):
        raise ValueError("the peer run takes one temperature for all requests")
    config = GenerationConfig(do_sample=temperature > 0, temperature=temperature or None, eos_token_id=None,
                              pad_token_id=0, max_new_tokens=max(p.max_tokens for p in params))
    manager = model.init_continuous_batching(generation_config=config)
    manager.start()
    try:
        # One short request first: the manager sizes its cache and warms up in its thread, outside the timing.
        manager.add_request(prompts[0][:8], request_id="warm-up", max_new_tokens=2)
        while not ((r := manager.get_result(timeout=1)) is not None and r.request_id == "warm-up" and r.is_finished()):
            if r is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching did not start")
        start = time.perf_counter()
        ids = {manager.add_request(p, max_new_tokens=sp.max_tokens) for p, sp in zip(prompts, params)}
        done = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                if result.error:
                    raise RuntimeError(f"transformers request {result.request_id} failed: {result.error}")
                done[result.request_id] = len(result.generated_tokens)
            elif result is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching stopped before every request finished")
        seconds = time.perf_counter() - start
    finally:
        manager.stop(block=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return sum(done.values()), seconds
