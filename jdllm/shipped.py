"""A model bundle for text in, text out: model + tokenizer + chat template + decoding defaults.

The shipped default model (`jdllm/assets/models/arith-llada-tiny`, trained here, see its MODEL_CARD.md) is a
LLaDA-architecture checkpoint in HF layout, loaded by the same code path as LLaDA-8B. The text side of any
checkpoint (tokenizer.json, tokenizer_config.json's `chat_template` and special tokens, generation_config.json's
EOS ids) is read by `jdllm.text.load_text`. A prompt is formatted with the chat template (one user turn);
a directory without one may give `prompt_template` (containing `{question}`) in `generation_config.json`, else
text is fed as is. `generation_config.json` may also set `gen_length` and `block_length`, and, for honest edges,
`max_prompt_length` (the trained prompt region) and `answer_pattern` (a regex every trained answer matches):
`Bundle.out_of_form` names an answer that falls outside them; `task` names the `jdllm.tasks` generator the
model was trained on (default "arithmetic"), whose held-out problems `jdllm bench` uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from jdllm.api import load
from jdllm.models.transformer import Transformer
from jdllm.text import ChatTemplate, load_text
from jdllm.tokenizer import Tokenizer

DEFAULT_MODEL = "arith-llada-tiny"


def assets_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "models"


def default_model_dir() -> Path:
    return assets_dir() / DEFAULT_MODEL


def shipped_models() -> list[str]:
    """Names of the model directories shipped in `jdllm/assets/models` (loadable by name with `load_bundle`)."""
    return sorted(p.name for p in assets_dir().iterdir() if (p / "config.json").exists())


@dataclasses.dataclass
class Bundle:
    model: Transformer
    tokenizer: Tokenizer
    prompt_template: str = "{question}"
    gen_length: int = 64
    block_length: int = 32
    name: str = "model"  # the model directory's name (bench rows name their model by it)
    chat_template: ChatTemplate | None = None
    stop_ids: tuple[int, ...] = ()  # ids that end an answer (EOS, EoT, ...); default: the model's EOS ids
    max_prompt_length: int | None = None  # longest prompt (tokens) the model was trained on, if it says
    answer_pattern: str | None = None  # a regex every trained answer matches (e.g. "#### -?\\d+"), if it says
    task: str = "arithmetic"  # the `jdllm.tasks` generator the model was trained on (bench / eval problems)

    def out_of_form(self, prompt_ids: list[int], answer: str, question: str | None = None) -> str | None:
        """Why an answer should not be trusted (None when nothing is wrong that can be seen): the `question` is
        outside the trained task (when the task module has a `check_question`, e.g. word problems: an unknown
        form, numbers outside the trained ranges), the prompt is longer than the trained prompt region, the answer
        is empty, or it does not match `answer_pattern`."""
        if question is not None:
            from jdllm.tasks import task_module

            check = getattr(task_module(self.task), "check_question", None)
            reason = None if check is None else check(question)
            if reason is not None:
                return f"model {self.name!r}: {reason}"
        if self.max_prompt_length is not None and len(prompt_ids) > self.max_prompt_length:
            return (f"the prompt has {len(prompt_ids)} tokens, more than the {self.max_prompt_length} model "
                    f"{self.name!r} was trained on; the answer is unreliable")
        if not answer.strip():
            return f"model {self.name!r} gave an empty answer: the question is probably outside what it was trained on"
        if self.answer_pattern is not None and re.search(self.answer_pattern, answer) is None:
            return (f"the answer does not have the trained form ({self.answer_pattern!r}): the question is probably "
                    f"outside what model {self.name!r} was trained on")
        return None

    def format_prompt(self, question: str, raw: bool = False) -> str:
        """`question` as one user turn of the chat template (else `prompt_template`); `raw`: as is."""
        if raw:
            return question
        if self.chat_template is not None:
            return self.chat_template.render([{"role": "user", "content": question}], add_generation_prompt=True)
        return self.prompt_template.format(question=question.rstrip())

    def format_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """A conversation (`[{"role", "content"}, ...]`) rendered by the checkpoint's chat template."""
        if self.chat_template is None:
            raise ValueError(f"model {self.name!r} has no chat_template (tokenizer_config.json / chat_template.jinja)")
        return self.chat_template.render(messages, add_generation_prompt)

    def encode_prompt(self, question: str, raw: bool = False) -> list[int]:
        return self.tokenizer.encode(self.format_prompt(question, raw))

    def decode_answer(self, tokens) -> str:
        """Text of the generated tokens up to the first stop id (EOS, EoT; mask tokens left, if any, are dropped)."""
        row = [int(t) for t in np.asarray(tokens)]
        stops = self.stop_ids or self.model.config.eos_ids
        row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
        return self.tokenizer.decode([t for t in row if t != self.model.config.mask_id])


def load_bundle(path: str | os.PathLike | None = None, dtype: str | None = None, check_finite: bool = False,
                lora: str | os.PathLike | None = None, attention_kernel: str = "auto") -> Bundle:
    """Load a model directory with its text side (`jdllm.text.load_text`: tokenizer.json, tokenizer_config.json's
    chat template and special tokens, generation_config.json), or a shipped model by name (`shipped_models()`,
    e.g. "arith-llada-tiny-d2f"); default: the shipped default model;
    `check_finite`, `lora` (a PEFT LoRA adapter directory merged at load) and `attention_kernel` as in
    `jdllm.load`."""
    path = Path(path) if path is not None else default_model_dir()
    if not path.is_dir() and str(path) in shipped_models():
        path = assets_dir() / str(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {path} (shipped models by name: {shipped_models()})")
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path} has no tokenizer.json: pass token ids to jdllm.generate instead")
    model = load(path, dtype, check_finite=check_finite, lora=lora, attention_kernel=attention_kernel)
    text = load_text(path, model.config)
    gen = {}
    if (path / "generation_config.json").exists():
        gen = json.loads((path / "generation_config.json").read_text())
    return Bundle(
        model=model,
        tokenizer=text.tokenizer,
        prompt_template=gen.get("prompt_template", "{question}"),
        gen_length=int(gen.get("gen_length", 64)),
        block_length=int(gen.get("block_length", 32)),
        name=path.resolve().name,
        chat_template=text.chat_template,
        stop_ids=text.stop_ids,
        max_prompt_length=gen.get("max_prompt_length"),
        answer_pattern=gen.get("answer_pattern"),
        task=gen.get("task", "arithmetic"),
    )
