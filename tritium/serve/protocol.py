"""The OpenAI HTTP API's request and response bodies, as plain dicts (no web framework here).

`parse_request` turns a /v1/completions or /v1/chat/completions body into token ids and SamplingParams, or
raises APIError (the status and the error JSON OpenAI clients expect) before anything reaches the engine.
Supported: prompt (text, token ids, or a list of either) / messages, max_tokens (max_completion_tokens),
temperature, top_p, top_k, min_p, seed, n, stop (strings or token ids) and stop_token_ids, ignore_eos,
stream with stream_options.include_usage, and return_token_ids (each choice also lists its token ids).
Parameters that would change the output but are not implemented (logprobs, penalties, ...) are refused,
not ignored.
"""
from __future__ import annotations

import numbers
import time
import uuid
from dataclasses import dataclass

from tritium.engine.sampling_params import SamplingParams

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat fills the context by default
MAX_N = 64
# name -> the value that means "not used"
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None,),
               "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "repetition_penalty": (None, 1),
               "logit_bias": (None, {}), "best_of": (None, 1), "tools": (None, []), "response_format": (None,)}


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    chat: bool
    prompts: list[list[int]]  # one per choice: each prompt n times, in order
    params: list[SamplingParams]  # one per choice
    num_prompt_tokens: int  # of the distinct prompts, for usage
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    return_token_ids: bool


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _prompts(body: dict, chat: bool, encode, encode_chat) -> list[list[int]]:
    """The distinct prompts as token ids."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _bad("each message needs a string 'role'", "messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: only text ones
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise _bad("only text content parts are supported", "messages")
                m["content"] = "".join(p["text"] for p in content)
            elif not isinstance(content, str):
                raise _bad("each message needs a string 'content'", "messages")
        return [encode_chat(messages)]
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("'prompt' must be a string, a list of token ids, or a non-empty list of those", "prompt")
    for p in prompt:
        if not (isinstance(p, str) or (isinstance(p, list) and all(_is_int(t) for t in p))):
            raise _bad("each prompt must be a string or a list of token ids", "prompt")
    return [encode(p) for p in prompt]


def _stops(body: dict) -> tuple[tuple[str, ...], list[int]]:
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    ids = body.get("stop_token_ids") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) or _is_int(s) for s in stop):
        raise _bad("'stop' must be a string or a list of strings / token ids", "stop")
    if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
        raise _bad("'stop_token_ids' must be a list of token ids", "stop_token_ids")
    return tuple(s for s in stop if isinstance(s, str)), [t for t in stop if _is_int(t)] + ids


def parse_request(body, *, chat: bool, model_name: str, max_model_len: int, encode, encode_chat=None
                  ) -> GenerationRequest:
    """encode(str | list[int]) and encode_chat(messages) -> token ids (ValueError on bad input)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model", model_name)
    if model != model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{model_name}'",
                       type="not_found_error", param="model", code="model_not_found")
    for name, off in UNSUPPORTED.items():
        if name in body and body[name] not in off:
            raise _bad(f"'{name}' is not supported", name)
    n = body.get("n", 1)
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise _bad(f"'n' must be an integer in [1, {MAX_N}], got {n!r}", "n")
    try:
        prompts = _prompts(body, chat, encode, encode_chat)
    except ValueError as e:
        raise _bad(str(e), "messages" if chat else "prompt") from None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    longest = max(len(p) for p in prompts)
    if max_tokens is None:
        max_tokens = max_model_len - longest if chat else COMPLETION_MAX_TOKENS
    elif not _is_int(max_tokens) or max_tokens < 1:
        raise _bad(f"'max_tokens' must be an integer >= 1, got {max_tokens!r}", "max_tokens")
    if longest + max(max_tokens, 1) > max_model_len:
        raise _bad(f"the prompt has {longest} tokens; with max_tokens={max_tokens} that is more than this "
                   f"model's maximum context length of {max_model_len} tokens", "max_tokens" if chat else "prompt")
    stop, stop_ids = _stops(body)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad(f"'seed' must be an integer, got {seed!r}", "seed")
    try:
        base = dict(temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                    top_k=body.get("top_k", 0), min_p=body.get("min_p", 0.0), max_tokens=max_tokens,
                    ignore_eos=_flag(body, "ignore_eos"), stop_token_ids=stop_ids)
        if base["temperature"] is None or base["top_p"] is None:
            raise ValueError("temperature and top_p must be numbers, not null")
        # n choices of one seeded request differ from each other and are each reproducible
        params = [SamplingParams(**base, seed=None if seed is None else seed + j) for j in range(n)]
    except ValueError as e:
        raise _bad(str(e)) from None
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    return GenerationRequest(
        chat=chat, prompts=[p for p in prompts for _ in range(n)], params=params * len(prompts),
        num_prompt_tokens=sum(len(p) for p in prompts), stop=stop, stream=_flag(body, "stream"),
        include_usage=_flag(options, "include_usage"), return_token_ids=_flag(body, "return_token_ids"))


# ---- responses -----------------------------------------------------------------------------------------
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _envelope(chat: bool, rid: str, model: str, chunk: bool, choices: list, **extra) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def response_body(req: GenerationRequest, rid: str, model: str, choices: list[dict]) -> dict:
    """choices: [{"text", "token_ids", "finish_reason"}] in choice order."""
    out = []
    for i, c in enumerate(choices):
        body = {"index": i, "finish_reason": c["finish_reason"], "logprobs": None}
        body.update({"message": {"role": "assistant", "content": c["text"]}} if req.chat else {"text": c["text"]})
        if req.return_token_ids:
            body["token_ids"] = c["token_ids"]
        out.append(body)
    done = sum(len(c["token_ids"]) for c in choices)
    return _envelope(req.chat, rid, model, False, out, usage=usage(req.num_prompt_tokens, done))


def chunk_body(req: GenerationRequest, rid: str, model: str, index: int, text: str | None,
               finish_reason: str | None = None, token_ids: list[int] | None = None, role: bool = False) -> dict:
    """One streamed piece of choice `index`: new text (None: none), its finish reason once it ends."""
    choice = {"index": index, "finish_reason": finish_reason, "logprobs": None}
    if req.chat:
        delta = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    if req.return_token_ids and token_ids is not None:
        choice["token_ids"] = token_ids
    return _envelope(req.chat, rid, model, True, [choice])


def usage_chunk(req: GenerationRequest, rid: str, model: str, completion_tokens: int) -> dict:
    return _envelope(req.chat, rid, model, True, [], usage=usage(req.num_prompt_tokens, completion_tokens))
