"""OpenAI request / response shapes for `/v1/completions` and `/v1/chat/completions`, and their checks.

Pure functions on dicts (no web framework here): `parse_completion` / `parse_chat` turn a request body into a
`ParsedRequest` or raise `RequestError` (HTTP status, message, offending field); the `*_response` / `*_chunk`
builders write the OpenAI JSON objects. Beside the OpenAI fields a body may carry `recipe` and the
`jdllm.generate` keywords (`jdllm.serve.settings.GENERATE_KEYWORDS`); a field nobody would read is refused,
never ignored.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from jdllm.serve.settings import GENERATE_KEYWORDS

COMMON_FIELDS = {"model", "max_tokens", "temperature", "seed", "stream", "stream_options", "stop", "n", "user",
                 "top_p", "recipe", *GENERATE_KEYWORDS}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "logprobs", "best_of", "presence_penalty", "frequency_penalty",
                                     "suffix", "logit_bias"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "logprobs", "presence_penalty",
                               "frequency_penalty", "logit_bias"}
# OpenAI fields accepted only at the value that asks for nothing (diffusion decoding has no such knob here)
NEUTRAL = {"n": 1, "top_p": 1, "echo": False, "logprobs": None, "best_of": 1, "presence_penalty": 0,
           "frequency_penalty": 0, "suffix": None, "logit_bias": None}
MAX_STOP = 4


class RequestError(Exception):
    """A bad request: HTTP `status`, a message, and the body field at fault (if one is)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


@dataclasses.dataclass
class ParsedRequest:
    kind: str                   # "completion" | "chat"
    prompt: str | list[int]     # text (chat: already rendered) or token ids
    decode: dict[str, Any]      # resolve_settings keywords: max_tokens, recipe, temperature, generate keywords
    seed: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    model: str | None


def _check_fields(body: Any, allowed: set[str]) -> dict:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}", param=unknown[0])
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] is not None and body[name] != neutral:
            raise RequestError(f"{name}={body[name]!r} is not supported (only {neutral!r})", param=name)
    return body


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise RequestError(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them, got {value!r}",
                           param="stop")
    return tuple(stops)


def _seed(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise RequestError(f"seed must be an integer in [0, 2**32), got {value!r}", param="seed")
    return value


def _common(body: dict, kind: str, prompt, max_tokens) -> ParsedRequest:
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise RequestError(f"stream_options may only hold include_usage, got {options!r}", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model must be a string, got {model!r}", param="model")
    decode = {k: body[k] for k in ("recipe", "temperature", *GENERATE_KEYWORDS) if body.get(k) is not None}
    if max_tokens is not None:
        decode["max_tokens"] = max_tokens
    return ParsedRequest(kind=kind, prompt=prompt, decode=decode, seed=_seed(body.get("seed")),
                         stream=_bool(body, "stream"), include_usage=bool((options or {}).get("include_usage")),
                         stop=_stop(body.get("stop")), model=model)


def parse_completion(body: Any) -> ParsedRequest:
    body = _check_fields(body, COMPLETION_FIELDS)
    if "prompt" not in body:
        raise RequestError("missing field 'prompt'", param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("prompt must be a string, a list of token ids, or a list holding one of them "
                               "(one prompt per request)", param="prompt")
    elif not isinstance(prompt, str) or not prompt:
        raise RequestError(f"prompt must be a non-empty string or a list of token ids, got {prompt!r}", param="prompt")
    return _common(body, "completion", prompt, body.get("max_tokens"))


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise RequestError(f"messages[{i}].content parts must all be {{'type': 'text', 'text': ...}}",
                               param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(f"messages[{i}].content must be a string or text parts, got {content!r}", param="messages")
    return content


def parse_chat(body: Any, render) -> ParsedRequest:
    """Chat request; `render(messages)` turns the checked `[{role, content}]` list (the last message the user's)
    into the prompt text (the app renders it with the checkpoint's chat template, see `jdllm.text`)."""
    body = _check_fields(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects", param="messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] must be an object with role system, user or assistant, got {m!r}",
                               param="messages")
        parts.append(_content(m, i))
    if messages[-1]["role"] != "user":
        raise RequestError("the last message must be the user's", param="messages")
    if not parts[-1].strip():
        raise RequestError("the last user message is empty", param="messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
        raise RequestError("give max_tokens or max_completion_tokens, not both", param="max_tokens")
    turns = [{"role": m["role"], "content": text} for m, text in zip(messages, parts)]
    return _common(body, "chat", render(turns), max_tokens)


def hold_back(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """(text safe to send, stopped): cut at the first stop string; without one, keep back a tail that could be
    the start of a stop string completed by the next block."""
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        return text[: min(cuts)], True
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return text[: len(text) - keep], False


def new_id(kind: str) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]


def response(kind: str, rid: str, model: str, text: str, finish: str, usage: dict) -> dict:
    now = int(time.time())
    if kind == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": "text_completion", "created": now, "model": model, "choices": [choice],
                "usage": usage}
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion", "created": now, "model": model, "choices": [choice],
            "usage": usage}


def chunk(kind: str, rid: str, model: str, text: str | None, finish: str | None, first: bool = False,
          usage: dict | None = None) -> dict:
    """One streamed event; `text=None` with `usage`: the final usage-only chunk (empty choices)."""
    now = int(time.time())
    obj = "text_completion" if kind == "completion" else "chat.completion.chunk"
    out = {"id": rid, "object": obj, "created": now, "model": model, "choices": []}
    if text is not None:
        if kind == "completion":
            out["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        else:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    if usage is not None:
        out["usage"] = usage
    return out
