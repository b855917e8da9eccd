"""`jdllm serve` end to end: the shipped model behind the OpenAI-compatible server, started in a subprocess on a
free loopback port, called with the official `openai` client (completions, chat, streaming) and with raw HTTP
(bad requests, metrics, a client that disconnects mid-stream, graceful shutdown).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

for _module in ("fastapi", "uvicorn", "openai", "httpx"):
    pytest.importorskip(_module, reason=f"the server tests need {_module} (pip install 'jdllm[serve]' openai httpx)")

import httpx  # noqa: E402
import openai  # noqa: E402

import jdllm  # noqa: E402
from jdllm.shipped import load_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
ANSWER = "12+7=19. 19-5=14. #### 14"
SLOTS = 2
LONG = dict(max_tokens=256, block_length=4)  # many small blocks: one streamed event each
LONG_GENERATE = dict(gen_length=256, block_length=4, steps=256)  # the same decode through jdllm.generate
# sampled at temperature 20 with seed 1 the tiny model writes 144 tokens before EOS (36 blocks of 4): a request
# that lasts long enough to leave it mid-stream
NOISY = dict(LONG, temperature=20.0, seed=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jdllm.cli", "serve", "--model", "arith-llada-tiny", "--port", str(port), "--slots",
                                 str(SLOTS), "--no-compile-cache", "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the server did not come up:\n{log.read_text()}")
        time.sleep(0.3)
    yield proc, base
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0)


def _metrics(base) -> dict[str, float]:
    text = httpx.get(base + "/metrics").text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))}


def _ok(base) -> float:
    return _metrics(base)['jdllm_requests_total{status="ok"}']


def test_completion_and_chat_answer_a_task_question(client, server):
    before = _ok(server[1])
    done = client.completions.create(model="arith-llada-tiny", prompt=QUESTION + "\n")
    assert done.choices[0].text == ANSWER and done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == 25 and done.usage.completion_tokens == 20
    chat = client.chat.completions.create(model="arith-llada-tiny", messages=[{"role": "user", "content": QUESTION}],
                                          extra_body={"recipe": "fast_dllm_parallel"})
    assert chat.choices[0].message.content == ANSWER and chat.choices[0].message.role == "assistant"
    assert chat.usage.model_extra["nfe"] < 20  # parallel decoding: fewer forwards than tokens
    assert _ok(server[1]) == before + 2


def test_streaming_sends_one_event_per_committed_block(client, server):
    bundle = load_bundle("arith-llada-tiny")
    stream = client.chat.completions.create(model="arith-llada-tiny", stream=True, max_tokens=LONG["max_tokens"],
                                            messages=[{"role": "user", "content": QUESTION}],
                                            extra_body={"block_length": LONG["block_length"]},
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(texts) == ANSWER and chunks[-1].usage.completion_tokens == 20
    # generate's tokens (it stops after the block holding EOS, as the server does): EOS at position 20 lies in
    # block 20 // 4, so blocks 0..5 are streamed, one event each
    out = jdllm.generate(bundle.model, [bundle.encode_prompt(QUESTION)], eos_early_stop=True, **LONG_GENERATE)
    assert int(np.flatnonzero(out.tokens[0] == bundle.model.config.eos_id)[0]) == 20
    assert texts == [bundle.decode_answer(out.tokens[0][4 * (i + 1) - 4: 4 * (i + 1)]) for i in range(6)]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason == "stop"


BAD = [
    (b"{not json", 400, None),
    (json.dumps({"max_tokens": 8}), 400, "prompt"),
    (json.dumps({"prompt": [5] * 2000, "max_tokens": 64}), 400, "prompt"),          # prompt too long
    (json.dumps({"prompt": "1+1", "recipe": "no_such_recipe"}), 400, "recipe"),
    (json.dumps({"prompt": "1+1", "temperature": -1}), 400, "temperature"),
    (json.dumps({"prompt": "1+1", "threshold": 1.5}), 400, "threshold"),
    (json.dumps({"prompt": "1+1", "max_tokens": 100000}), 400, "max_tokens"),
    (json.dumps({"prompt": "1+1", "max_tokens": 0}), 400, "max_tokens"),
    (json.dumps({"prompt": "1+1", "n": 2}), 400, "n"),
    (json.dumps({"prompt": "1+1", "top_k": 5}), 400, "top_k"),
    (json.dumps({"prompt": "1+1", "model": "gpt-4"}), 404, "model"),
    (json.dumps(["prompt"]), 400, None),
]


def test_bad_requests_get_a_4xx_json_error_and_change_nothing(server):
    base = server[1]
    before = _metrics(base)
    for body, status, param in BAD:
        r = httpx.post(base + "/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param, (body, err)
    r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    after = _metrics(base)
    assert after['jdllm_requests_total{status="rejected"}'] == before['jdllm_requests_total{status="rejected"}'] + 13
    for key in ('jdllm_requests_total{status="ok"}', "jdllm_slots_busy", "jdllm_queue_length"):
        assert after[key] == before[key], key
    good = httpx.post(base + "/v1/completions", json={"prompt": QUESTION + "\n"}, timeout=60)
    assert good.json()["choices"][0]["text"] == ANSWER


def test_a_client_leaving_mid_stream_frees_its_slot(server):
    base = server[1]
    before = _metrics(base)
    body = {"prompt": QUESTION + "\n", "stream": True, **NOISY}
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
    deadline = time.time() + 20
    while time.time() < deadline:
        m = _metrics(base)
        if m["jdllm_dropped_total"] == before["jdllm_dropped_total"] + 1 and m["jdllm_slots_busy"] == 0:
            break
        time.sleep(0.1)
    assert m['jdllm_requests_total{status="cancelled"}'] == before['jdllm_requests_total{status="cancelled"}'] + 1
    assert m["jdllm_dropped_total"] == before["jdllm_dropped_total"] + 1  # the engine took it out of its slot
    assert m["jdllm_slots_busy"] == 0 and m['jdllm_requests_total{status="ok"}'] == before['jdllm_requests_total{status="ok"}']


def test_graceful_shutdown_finishes_the_request_in_flight(server):
    """Runs last: SIGTERM while a stream is mid-way; the stream still completes, then the server exits."""
    proc, base = server
    body = {"prompt": QUESTION + "\n", "stream": True, **NOISY}
    texts = []
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line.startswith("data: "))
        texts.append(json.loads(next(lines)[6:])["choices"][0]["text"])
        proc.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in rest[:-1]]
    texts += [e["choices"][0]["text"] for e in events]
    assert len(texts) == 36 and len("".join(texts)) > 50 and events[-1]["choices"][0]["finish_reason"] == "stop"
    # uvicorn re-raises the signal once its shutdown (lifespan included) is complete
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
