"""The HTTP server of `jdllm serve`: FastAPI + uvicorn around one `Engine` stepped by a background thread.

Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (OpenAI shapes; `stream: true` sends server-sent
events, one per committed block, then `data: [DONE]`), `GET /v1/models`, `GET /health`, `GET /metrics`
(Prometheus text). A bad request gets a 4xx JSON error and changes nothing; a streaming client that disconnects
frees its slot at the next block boundary; on SIGINT / SIGTERM uvicorn stops accepting connections, the
requests in flight finish, then the engine thread ends.
"""

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from typing import AsyncIterator

import numpy as np

from jdllm.serve.engine import Engine, Event
from jdllm.serve.openai_api import (RequestError, chunk, hold_back, new_id, parse_chat, parse_completion,
                                    response)
from jdllm.serve.settings import ServeDefaults, resolve_settings

log = logging.getLogger("jdllm.serve")
POLL_S = 0.5  # how often a waiting non-streaming request checks that its client is still there


class Metrics:
    """Counters of the server (touched from the event loop only) and the engine's gauges, as Prometheus text."""

    def __init__(self):
        self.requests = {"ok": 0, "error": 0, "cancelled": 0, "rejected": 0}
        self.completion_tokens = 0
        self.nfe = 0
        self.latency_sum = 0.0

    def render(self, engine: Engine) -> str:
        secs = engine.decode_seconds
        rate = self.completion_tokens / secs if secs > 0 else 0.0
        per_token = self.nfe / self.completion_tokens if self.completion_tokens else 0.0
        lines = [
            "# HELP jdllm_requests_total Requests by outcome (rejected: 4xx before decoding).",
            "# TYPE jdllm_requests_total counter",
            *(f'jdllm_requests_total{{status="{k}"}} {v}' for k, v in self.requests.items()),
            "# HELP jdllm_queue_length Requests waiting for a slot.",
            "# TYPE jdllm_queue_length gauge",
            f"jdllm_queue_length {engine.queue_length}",
            "# HELP jdllm_slots_busy Slots holding a request.",
            "# TYPE jdllm_slots_busy gauge",
            f"jdllm_slots_busy {engine.live}",
            "# HELP jdllm_slots_total Slots of the static batch.",
            "# TYPE jdllm_slots_total gauge",
            f"jdllm_slots_total {engine.slots}",
            "# HELP jdllm_dropped_total Cancelled requests the engine took out of the queue or out of a slot.",
            "# TYPE jdllm_dropped_total counter",
            f"jdllm_dropped_total {engine.dropped}",
            "# HELP jdllm_completion_tokens_total Answer tokens returned (up to EOS / stop / max_tokens).",
            "# TYPE jdllm_completion_tokens_total counter",
            f"jdllm_completion_tokens_total {self.completion_tokens}",
            "# HELP jdllm_nfe_total Forward evaluations of the completed requests.",
            "# TYPE jdllm_nfe_total counter",
            f"jdllm_nfe_total {self.nfe}",
            "# HELP jdllm_decode_seconds_total Time in compiled block calls (compiles included).",
            "# TYPE jdllm_decode_seconds_total counter",
            f"jdllm_decode_seconds_total {secs:.6f}",
            "# HELP jdllm_tokens_per_second Answer tokens per second of decode time.",
            "# TYPE jdllm_tokens_per_second gauge",
            f"jdllm_tokens_per_second {rate:.3f}",
            "# HELP jdllm_nfe_per_token Forward evaluations per answer token.",
            "# TYPE jdllm_nfe_per_token gauge",
            f"jdllm_nfe_per_token {per_token:.4f}",
            "# HELP jdllm_request_latency_seconds_sum Summed latency of completed requests.",
            "# TYPE jdllm_request_latency_seconds_sum counter",
            f"jdllm_request_latency_seconds_sum {self.latency_sum:.6f}",
        ]
        return "\n".join(lines) + "\n"


class EngineThread:
    """Steps the engine in a thread; hands each event to its request's asyncio queue."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="jdllm-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish everything queued or in flight, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, prompt, settings, seed) -> tuple[int, asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        with self._wake:
            if self._stopping:
                raise RequestError("the server is shutting down", status=503)
            rid = self.engine.submit(prompt, settings, seed=seed)
            self._queues[rid] = (asyncio.get_running_loop(), queue)
            self._wake.notify()
        return rid, queue

    def cancel(self, rid: int) -> None:
        self.engine.cancel(rid)
        with self._wake:
            self._queues.pop(rid, None)
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self.engine.busy and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self.engine.busy:
                    return
            try:
                events = self.engine.step()
            except Exception as e:  # an engine bug: fail the requests it holds, keep serving
                log.exception("engine step failed")
                events = [Event(rid, "error", np.zeros((0,), np.int32), error=f"engine failure: {e}")
                          for rid in list(self._queues)]
                self.engine = _reset(self.engine)
            for event in events:
                with self._wake:
                    target = self._queues.get(event.request_id)
                    if target is not None and event.kind != "block":
                        del self._queues[event.request_id]
                if target is not None:
                    loop, queue = target
                    loop.call_soon_threadsafe(queue.put_nowait, event)


def _reset(engine: Engine) -> Engine:
    """A fresh engine with the same model and settings (after a failed step its lanes are in an unknown state)."""
    from flax import nnx

    model = nnx.merge(engine.graphdef, engine.params)
    return Engine(model, engine.slots, engine.prompt_buckets, engine.stop_at_eos, engine.max_lanes)


def create_app(bundle, engine: Engine, defaults: ServeDefaults, model_name: str | None = None):
    """The FastAPI application serving `bundle`'s model through `engine`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    name = model_name or bundle.name
    runner = EngineThread(engine)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runner.start()
        yield
        await asyncio.to_thread(runner.stop)  # after uvicorn let the in-flight requests finish

    app = FastAPI(title="jdllm", lifespan=lifespan)
    app.state.metrics = metrics

    def reject(err: RequestError) -> JSONResponse:
        metrics.requests["rejected"] += 1
        return JSONResponse(err.body(), status_code=err.status)

    def render_chat(messages: list[dict]) -> str:
        """The checkpoint's chat template; a model without one: the turns' text joined by newlines in its
        prompt template."""
        if bundle.chat_template is not None:
            return bundle.format_chat(messages)
        return bundle.prompt_template.format(question="\n".join(m["content"] for m in messages).rstrip())

    async def prepare(request: Request, kind: str):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON: {e}") from None
        parsed = parse_completion(body) if kind == "completion" else parse_chat(body, render_chat)
        if parsed.model is not None and parsed.model != name:
            raise RequestError(f"model {parsed.model!r} is not served here; this server serves {name!r}",
                               param="model", status=404, code="model_not_found")
        try:
            settings = resolve_settings(bundle.model.config, defaults, **parsed.decode)
            ids = parsed.prompt if isinstance(parsed.prompt, list) else bundle.tokenizer.encode(parsed.prompt)
            if not ids:
                raise ValueError("the prompt encodes to no tokens")
            rid, queue = runner.submit(ids, settings, parsed.seed)
        except (ValueError, TypeError, KeyError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            field = _field_named(str(message), ("max_tokens", *parsed.decode, "prompt"))
            code = "context_length_exceeded" if "maximum length" in str(message) else None
            raise RequestError(str(message), param=field, code=code) from None
        return parsed, ids, rid, queue

    def answer(parsed, tokens) -> tuple[str, str, int]:
        """(text, finish_reason, answer tokens) of committed tokens, after stop strings."""
        text = bundle.decode_answer(tokens)
        text, stopped = hold_back(text, parsed.stop)
        row = [int(t) for t in tokens]
        eos = bundle.model.config.eos_id
        n = row.index(eos) if eos is not None and eos in row else len(row)
        return text, "stop" if stopped else None, n

    def finish(parsed, event: Event, n_prompt: int, t0: float) -> tuple[str, str, dict]:
        text, stopped, n = answer(parsed, event.tokens)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n, "nfe": event.nfe}
        metrics.requests["ok"] += 1
        metrics.completion_tokens += n
        metrics.nfe += event.nfe
        metrics.latency_sum += time.perf_counter() - t0
        return text, stopped or event.finish_reason, usage

    async def complete(request: Request, kind: str):
        t0 = time.perf_counter()
        try:
            parsed, ids, rid, queue = await prepare(request, kind)
        except RequestError as err:
            return reject(err)
        if parsed.stream:
            return StreamingResponse(stream(parsed, ids, rid, queue, t0), media_type="text/event-stream")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    runner.cancel(rid)
                    metrics.requests["cancelled"] += 1
                    return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
                continue
            if event.kind == "error":
                metrics.requests["error"] += 1
                return JSONResponse({"error": {"message": event.error, "type": "server_error", "param": None,
                                               "code": None}}, status_code=500)
            if event.kind == "done":
                text, reason, usage = finish(parsed, event, len(ids), t0)
                return JSONResponse(response(kind, new_id(kind), name, text, reason, usage))

    async def stream(parsed, ids, rid, queue, t0) -> AsyncIterator[str]:
        sid, sent, done = new_id(parsed.kind), "", False
        try:
            while not done:
                event = await queue.get()
                if event.kind == "error":
                    metrics.requests["error"] += 1
                    done = True
                    yield _sse({"error": {"message": event.error, "type": "server_error"}})
                    break
                if event.kind == "done":
                    text, reason, usage = finish(parsed, event, len(ids), t0)
                    done = True
                else:
                    text, reason, _ = answer(parsed, event.tokens)
                    usage = None
                    if reason == "stop":  # a stop string: the answer is final
                        runner.cancel(rid)
                        text, reason, usage = finish(parsed, event, len(ids), t0)
                        done = True
                if text.startswith(sent) and (text != sent or done):
                    yield _sse(chunk(parsed.kind, sid, name, text[len(sent):], reason if done else None,
                                     first=not sent))
                    sent = text
                elif done:
                    yield _sse(chunk(parsed.kind, sid, name, "", reason, first=not sent))
                if done and parsed.include_usage:
                    yield _sse(chunk(parsed.kind, sid, name, None, None, usage=usage))
            yield "data: [DONE]\n\n"
        finally:
            if not done:  # the client went away mid-stream: free the slot
                runner.cancel(rid)
                metrics.requests["cancelled"] += 1

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, "chat")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "jdllm"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "slots": engine.slots, "slots_busy": engine.live,
                "queue_length": engine.queue_length}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(runner.engine), media_type="text/plain; version=0.0.4")

    return app


def _field_named(message: str, fields) -> str | None:
    """The request field a validation message talks about first (its `param` in the error body)."""
    found = [(m.start(), f) for f in fields for m in [re.search(rf"\b{re.escape(f)}\b", message)] if m]
    return min(found)[1] if found else None


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def serve(args) -> int:
    """`jdllm serve`: load the model, build the engine, warm it up, run uvicorn until SIGINT / SIGTERM."""
    import uvicorn

    from jdllm.shipped import load_bundle

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bundle = load_bundle(args.model, check_finite=True, lora=args.lora)
    defaults = ServeDefaults(gen_length=bundle.gen_length, block_length=bundle.block_length, recipe=args.recipe,
                             max_tokens=args.max_tokens)
    settings = resolve_settings(bundle.model.config, defaults)  # the defaults must decode before anything listens
    engine = Engine(bundle.model, slots=args.slots, stop_at_eos=True)
    if args.warmup:
        t0 = time.perf_counter()
        engine.warmup(settings)
        log.info("compiled the default lane (%d slots) in %.1fs", args.slots, time.perf_counter() - t0)
    app = create_app(bundle, engine, defaults)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
