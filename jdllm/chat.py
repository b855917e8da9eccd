"""`jdllm chat`: a conversation with a model through its own chat template, one stdin line per user turn.

As LLaDA's `chat.py` does, every turn re-renders the whole conversation with the checkpoint's `chat_template`
(`add_generation_prompt=True`), generates the assistant's answer, cuts it at the first stop id (EOS / EoT) and
appends it to the history. `/reset` clears the history, `/exit` (or end of input) ends the session.
"""

from __future__ import annotations

from typing import Any, TextIO

import jdllm
from jdllm.log import get_logger
from jdllm.shipped import Bundle

_LOG = get_logger(__name__)


def chat_loop(bundle: Bundle, stdin: TextIO, stdout: TextIO, *, gen_length: int, system: str | None = None,
              history: bool = True, **generate_kwargs: Any) -> int:
    """Read user turns from `stdin` (one per line), write each answer to `stdout`; returns 0. `history=False`
    formats every turn alone (single-turn models); `generate_kwargs` go to `jdllm.generate`."""
    if bundle.chat_template is None:
        raise ValueError(f"model {bundle.name!r} has no chat_template (tokenizer_config.json / chat_template.jinja): "
                         "`jdllm chat` needs one; use `jdllm generate --raw` instead")
    opening = [] if system is None else [{"role": "system", "content": system}]
    messages = list(opening)
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(opening)
            continue
        if not text.strip():
            continue
        turn = (messages if history else list(opening)) + [{"role": "user", "content": text}]
        ids = bundle.tokenizer.encode(bundle.format_chat(turn, add_generation_prompt=True))
        out = jdllm.generate(bundle.model, [ids], gen_length=gen_length, **generate_kwargs)
        answer = bundle.decode_answer(out.tokens[0])
        _LOG.debug(f"[nfe={int(out.nfe[0])}, prompt tokens={len(ids)}, gen_length={gen_length}]")
        stdout.write(answer + "\n")
        stdout.flush()
        messages = turn + [{"role": "assistant", "content": answer}]
