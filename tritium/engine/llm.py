"""The user-facing engine: `LLM(model_dir, **config).generate(prompts, sampling_params)`.

Requests are validated completely before any is queued (a bad one raises ValueError and leaves the engine
serving the others). `add_request`/`step`/`is_finished` drive the engine one step at a time; `stream` yields
tokens as they come; `chat` applies the checkpoint's chat template first.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tritium import platform
from tritium.engine.config import EngineConfig
from tritium.engine.detokenize import IncrementalText
from tritium.engine.prompts import PromptEncoder
from tritium.engine.sampling_params import SamplingParams
from tritium.engine.scheduler import Scheduler
from tritium.engine.sequence import Sequence


@dataclass
class StepOutput:
    seq_id: int
    token_id: int  # the token sampled for this request in this step
    finished: bool
    finish_reason: str | None = None  # "stop" | "length" once finished


class LLM:
    def __init__(self, model: str, **kwargs):
        from transformers import AutoTokenizer

        from tritium.engine.executor import make_runner
        from tritium.model.loader import load_hf_config, model_class

        config = EngineConfig.from_kwargs(str(model), **kwargs)
        self.hf_config = load_hf_config(config.model)
        max_len = min(config.max_model_len, model_class(self.hf_config).max_context(self.hf_config))
        self.config = dataclasses.replace(config, max_model_len=max_len)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.prompts = PromptEncoder(self.tokenizer, self.hf_config.vocab_size)
        platform.announce_cpu_mode()
        self.runner = make_runner(self.config, self.hf_config, platform.DEVICE)
        self.reset()
        if platform.HAS_CUDA:
            self.warm_up()

    def reset(self) -> None:
        """Drop every request: an empty scheduler over the same KV cache (blocks and prefix cache freed)."""
        self.scheduler = Scheduler(self.config, self.runner.num_blocks, self._eos_token_ids())
        self._seqs: dict[int, Sequence] = {}
        self._in_flight = None  # (batch, SampledTokens) of the step launched last, not yet collected
        self.stats = {"prefill_tokens": 0, "decode_tokens": 0}

    def warm_up(self) -> None:
        """Meet every kernel shape the config allows (tritium.engine.warmup; start-up does this on a GPU),
        save what had to be tuned to the user's table, and start again with an empty scheduler."""
        from tritium.autotune import tables
        from tritium.engine.warmup import warm_up

        if not self.is_finished():
            raise RuntimeError("warm_up needs an idle engine")
        warm_up(self)
        gpu = platform.gpu_name()
        if tables.enabled() and tables.entries(tables.KERNELS, tables.load(gpu)):
            tables.save(gpu, tables.user_dir(), only_new=True)
        self.reset()

    def _eos_token_ids(self) -> list[int]:
        """EOS ids from config.json and generation_config.json (chat checkpoints end turns with another id)."""
        gen = Path(self.config.model) / "generation_config.json"
        sources = [self.hf_config.eos_token_id]
        if gen.is_file():
            sources.append(json.loads(gen.read_text()).get("eos_token_id"))
        ids = set()
        for source in sources:
            ids.update(source if isinstance(source, list) else [] if source is None else [source])
        return sorted(ids)

    # ---- requests ------------------------------------------------------------------------------------
    def encode_prompt(self, prompt) -> list[int]:
        """Token ids of a prompt (text or token ids); ValueError if bad (tritium.engine.prompts)."""
        return self.prompts.encode(prompt)

    def _make_seqs(self, prompts, sampling_params) -> list[Sequence]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], numbers.Integral)):
            prompts = [prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        for p in params:
            if not isinstance(p, SamplingParams):
                raise ValueError(f"sampling_params must be SamplingParams, got {type(p).__name__}")
        return [Sequence(self.encode_prompt(pr), p, block_size=self.config.kvcache_block_size)
                for pr, p in zip(prompts, params)]

    def _queue(self, seqs: list[Sequence]) -> list[int]:
        added = []
        try:
            for seq in seqs:
                self.scheduler.add(seq)
                added.append(seq)
        except ValueError:
            for seq in added:  # all or nothing: the engine keeps serving what was queued before
                self.scheduler.abort(seq.seq_id)
            raise
        for seq in seqs:
            self._seqs[seq.seq_id] = seq
        return [s.seq_id for s in seqs]

    def add_request(self, prompt, sampling_params: SamplingParams | None = None) -> int:
        """Queue one request (text or token ids); returns its id."""
        return self.add_requests([prompt], sampling_params)[0]

    def add_requests(self, prompts, sampling_params=None) -> list[int]:
        """Queue several requests, all or none (a bad one raises ValueError and none is queued)."""
        return self._queue(self._make_seqs(prompts, sampling_params))

    def abort(self, seq_id: int) -> None:
        """Stop a request now (its blocks are freed) and forget it."""
        self.scheduler.abort(seq_id)
        self.release(seq_id)

    def release(self, seq_id: int) -> None:
        """Forget a finished request (its result is no longer needed)."""
        self._seqs.pop(seq_id, None)

    def is_finished(self) -> bool:
        return self.scheduler.is_finished() and self._in_flight is None

    # ---- stepping ------------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Launch the next step, then collect the one launched before it (so the host schedules while the
        GPU computes); returns the tokens that step gave its requests."""
        batch = self.scheduler.schedule()
        launched = (batch, self.runner.launch(batch)) if batch is not None else None
        done, self._in_flight = self._in_flight, launched
        if done is None:
            if launched is None and not self.scheduler.is_finished():
                raise RuntimeError("scheduler stalled with work left and no step in flight")
            return []
        batch, tokens = done
        tokens = tokens.tolist()
        self.stats["prefill_tokens"] += batch.num_tokens - batch.num_decodes
        self.stats["decode_tokens"] += batch.num_decodes
        seqs = batch.sampling_seqs
        self.scheduler.postprocess(batch, tokens)
        # A token a request kept (not one computed after it had stopped, or after an abort).
        return [StepOutput(s.seq_id, t, s.is_finished, s.finish_reason)
                for s, t, i in zip(seqs, tokens, batch.token_index) if len(s.token_ids) > i]

    def result(self, seq_id: int) -> dict:
        seq = self._seqs[seq_id]
        ids = seq.completion_token_ids
        return {"text": self.tokenizer.decode(ids, skip_special_tokens=True), "token_ids": ids,
                "finish_reason": seq.finish_reason}

    def stream(self, prompts, sampling_params=None) -> Iterator[dict]:
        """Yield {"index", "token_id", "text", "finished"} per new token, as steps produce them; "text" is
        the newly decoded text of that request (empty while a multi-byte character is incomplete)."""
        ids = self._queue(self._make_seqs(prompts, sampling_params))
        index = {sid: i for i, sid in enumerate(ids)}
        texts = {sid: IncrementalText(self.tokenizer) for sid in ids}
        pending = set(ids)
        try:
            while pending:
                for out in self.step():
                    if out.seq_id not in index:
                        continue
                    delta = texts[out.seq_id].add(out.token_id, final=out.finished)
                    if out.finished:
                        pending.discard(out.seq_id)
                        self.release(out.seq_id)
                    yield {"index": index[out.seq_id], "token_id": out.token_id, "text": delta,
                           "finished": out.finished}
        finally:  # a consumer that stops early, or a failed step: nothing of this call stays queued
            for sid in pending:
                self.abort(sid)

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[dict]:
        """Run prompts (strings or token-id lists) to completion; results in submission order."""
        ids = self._queue(self._make_seqs(prompts, sampling_params))
        pending = set(ids)
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Generating", dynamic_ncols=True)
        start, produced = time.perf_counter(), 0
        try:
            while pending:
                outs = self.step()
                produced += len(outs)
                done = [o.seq_id for o in outs if o.finished and o.seq_id in pending]
                pending.difference_update(done)
                if bar is not None:
                    bar.set_postfix(output=f"{produced / max(time.perf_counter() - start, 1e-9):.0f}tok/s")
                    bar.update(len(done))
        except BaseException:  # a failed step (or Ctrl-C): this call's requests leave the engine
            for sid in ids:
                self.abort(sid)
            raise
        finally:
            if bar is not None:
                bar.close()
        results = [self.result(sid) for sid in ids]
        for sid in ids:
            self.release(sid)
        return results

    def chat(self, conversations, sampling_params=None, use_tqdm: bool = True) -> list[dict]:
        """conversations: one list of {"role", "content"} messages, or a list of them."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        return self.generate([self.chat_prompt(c) for c in conversations], sampling_params, use_tqdm)

    def chat_prompt(self, messages) -> list[int]:
        """Token ids of a conversation in the checkpoint's chat template, ready for the assistant's turn."""
        return self.prompts.chat(messages)

    # ---- lifetime ------------------------------------------------------------------------------------
    def exit(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()
            self.runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.exit()
