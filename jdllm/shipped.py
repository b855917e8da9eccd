"""A model bundle for text in, text out: model + tokenizer + prompt template + decoding defaults.

The shipped default model (`jdllm/assets/models/arith-llada-tiny`, trained here, see its MODEL_CARD.md) is a
LLaDA-architecture checkpoint in HF layout, loaded by the same code path as LLaDA-8B. A model directory may
carry `generation_config.json` with `prompt_template` (containing `{question}`), `gen_length` and
`block_length`; without it, text is fed as is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jdllm.api import load
from jdllm.models.transformer import Transformer
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

    def format_prompt(self, question: str, raw: bool = False) -> str:
        return question if raw else self.prompt_template.format(question=question.rstrip())

    def encode_prompt(self, question: str, raw: bool = False) -> list[int]:
        return self.tokenizer.encode(self.format_prompt(question, raw))

    def decode_answer(self, tokens) -> str:
        """Text of the generated tokens up to the first EOS (mask tokens left, if any, are dropped)."""
        row = [int(t) for t in np.asarray(tokens)]
        eos = self.model.config.eos_id
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        return self.tokenizer.decode([t for t in row if t != self.model.config.mask_id])


def load_bundle(path: str | os.PathLike | None = None, dtype: str | None = None, check_finite: bool = False,
                lora: str | os.PathLike | None = None) -> Bundle:
    """Load a model directory with its `tokenizer.json` (and `generation_config.json` if present), or a shipped
    model by name (`shipped_models()`, e.g. "arith-llada-tiny-d2f"); default: the shipped default model.
    `check_finite` and `lora` (a PEFT LoRA adapter directory merged at load) as in `jdllm.load`."""
    path = Path(path) if path is not None else default_model_dir()
    if not path.is_dir() and str(path) in shipped_models():
        path = assets_dir() / str(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {path} (shipped models by name: {shipped_models()})")
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"{path} has no tokenizer.json: pass token ids to jdllm.generate instead")
    model = load(path, dtype, check_finite=check_finite, lora=lora)
    cfg = model.config
    tokenizer = Tokenizer.from_file(path, mask_id=cfg.mask_id, eos_id=cfg.eos_id, pad_id=cfg.pad_id)
    gen = {}
    if (path / "generation_config.json").exists():
        gen = json.loads((path / "generation_config.json").read_text())
    return Bundle(
        model=model,
        tokenizer=tokenizer,
        prompt_template=gen.get("prompt_template", "{question}"),
        gen_length=int(gen.get("gen_length", 64)),
        block_length=int(gen.get("block_length", 32)),
    )
