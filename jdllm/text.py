"""Text in, text out for any checkpoint: its own tokenizer files, chat template and special ids.

A Hugging Face model directory describes its text side in three files, read here as `transformers` reads them:
- `tokenizer.json`: the `tokenizers` pipeline (loaded with the `tokenizers` library, `jdllm.tokenizer.Tokenizer`);
- `tokenizer_config.json`: the special tokens (`bos_token`, `eos_token`, `pad_token`, `mask_token`, ...; a string
  or an AddedToken object `{"content": ...}`) and `chat_template` (a Jinja string, or a list of
  `{"name", "template"}` of which "default" is used); a `chat_template.jinja` file beside it takes precedence
  (newer checkpoints keep the template there);
- `generation_config.json`: further `eos_token_id`s that end a generation.

`ChatTemplate` renders a template as `transformers`' `apply_chat_template` does (PreTrainedTokenizerBase,
`_compile_jinja_template`): a sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, the
`raise_exception` and `strftime_now` globals, a `tojson` filter that keeps non-ASCII text, and the tokenizer's
special tokens (`bos_token`, `eos_token`, ...) as template variables.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from jdllm.tokenizer import Tokenizer

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateError(ValueError):
    """A chat template failed to compile or render (also what the template's `raise_exception` raises)."""


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's chat template (`source`, Jinja) with the special tokens it may refer to."""

    source: str
    special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise TypeError(f"chat template source must be a non-empty string, got {self.source!r}")
        self._compiled()  # fail on a syntax error now, naming the template

    def _compiled(self):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            return env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template does not compile: {e} (line {e.lineno})") from None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               **variables: Any) -> str:
        """The prompt text of a conversation: `messages` is a list of `{"role": ..., "content": ...}`;
        `add_generation_prompt` appends the template's opening of an assistant turn; `variables` (e.g. `tools`,
        `documents`) are passed to the template as `apply_chat_template`'s extra keyword arguments are."""
        check_messages(messages)
        context = {**self.special_tokens, **variables}
        return self._compiled().render(messages=[dict(m) for m in messages],
                                       add_generation_prompt=add_generation_prompt, **context)


def check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """`messages` is a non-empty list of mappings, each with a string `role` and a string `content`."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise TypeError(f"messages[{i}] must be a dict with a string 'role' and a 'content', got {m!r}")


# ---------------------------------------------------------------------------------------------- checkpoint files
def read_json_file(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when the file does not exist; ValueError naming the file otherwise."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def token_text(value: Any, where: str) -> str | None:
    """A special token of tokenizer_config.json: a string, an AddedToken object `{"content": ...}`, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{where}: expected a token string or {{\"content\": ...}}, got {value!r}")


def special_tokens(config: Mapping[str, Any], where: str) -> dict[str, str]:
    """`bos_token`, `eos_token`, ... of a tokenizer_config.json (those it sets), as strings."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = token_text(config.get(key), f"{where}: {key}")
        if text is not None:
            out[key] = text
    return out


def chat_template_source(directory: Path, config: Mapping[str, Any]) -> str | None:
    """The template text of a checkpoint: `chat_template.jinja`, else tokenizer_config.json's `chat_template`
    (a string, or the "default" entry of a list of named templates); None when it has none."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text(encoding="utf-8")
    value = config.get("chat_template")
    where = directory / "tokenizer_config.json"
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ValueError(f"{where}: chat_template is a list without a 'default' entry (names: {sorted(map(str, named))})")
    raise ValueError(f"{where}: chat_template must be a string or a list of {{name, template}}, got {type(value).__name__}")


def _ids_of(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(type(v) is int for v in values):
        raise ValueError(f"{where}: eos_token_id must be an int or a list of ints, got {value!r}")
    return list(values)


def stop_ids(directory: Path, tokenizer: Tokenizer, model_config, tokenizer_config: Mapping[str, Any]) -> tuple[int, ...]:
    """Every id that ends a generated answer: the model's EOS ids (config.json), its EoT id, the
    tokenizer_config's `eos_token` (chat models name their end-of-turn token there, e.g. LLaDA-Instruct's
    `<|eot_id|>`, Dream-Instruct's `<|im_end|>`) and generation_config.json's `eos_token_id`s; in that order."""
    ids = list(getattr(model_config, "eos_ids", ()))
    eot = getattr(model_config, "eot_id", None)
    if eot is not None:
        ids.append(eot)
    eos_text = token_text(tokenizer_config.get("eos_token"), f"{directory / 'tokenizer_config.json'}: eos_token")
    if eos_text is not None:
        i = tokenizer.hf.token_to_id(eos_text)
        if i is None:
            raise ValueError(f"{directory / 'tokenizer_config.json'}: eos_token {eos_text!r} is not in tokenizer.json")
        ids.append(i)
    gen = read_json_file(directory / "generation_config.json")
    ids += _ids_of(gen.get("eos_token_id"), str(directory / "generation_config.json"))
    return tuple(dict.fromkeys(ids))


@dataclasses.dataclass(frozen=True)
class CheckpointText:
    """The text side of a checkpoint: tokenizer, chat template (None when it has none), ids ending an answer."""

    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    stop_ids: tuple[int, ...]

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        if self.chat_template is None:
            raise ValueError("this checkpoint has no chat_template (tokenizer_config.json / chat_template.jinja)")
        return self.chat_template.render(messages, add_generation_prompt, **variables)

    def answer_text(self, tokens: Iterable[int], mask_id: int | None = None) -> str:
        """Text of generated tokens up to the first stop id; mask tokens still left are dropped."""
        row = [int(t) for t in tokens]
        cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
        return self.tokenizer.decode([t for t in row[:cut] if t != mask_id], skip_special=True)


def load_text(directory: str | os.PathLike, model_config=None) -> CheckpointText:
    """Read a checkpoint's `tokenizer.json`, `tokenizer_config.json` / `chat_template.jinja` and
    `generation_config.json`. Special ids (mask, EOS, pad) come from `model_config` (the model's config.json)
    when given, else from the tokenizer's special tokens."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        raise FileNotFoundError(f"{directory} has no tokenizer.json: pass token ids to jdllm.generate instead")
    ids = {}
    if model_config is not None:
        ids = dict(mask_id=model_config.mask_id, eos_id=model_config.eos_id, pad_id=model_config.pad_id)
    tokenizer = Tokenizer.from_file(directory, **ids)
    config = read_json_file(directory / "tokenizer_config.json")
    source = chat_template_source(directory, config)
    template = None
    if source is not None:
        try:
            template = ChatTemplate(source, special_tokens(config, str(directory / "tokenizer_config.json")))
        except TemplateError as e:
            raise TemplateError(f"{directory}: {e}") from None
    return CheckpointText(tokenizer, template, stop_ids(directory, tokenizer, model_config, config))


def write_tokenizer_config(directory: str | os.PathLike, tokenizer: Tokenizer, chat_template: str | None = None,
                           **extra: Any) -> Path:
    """Write `tokenizer_config.json` for `tokenizer` (its mask / EOS / pad tokens, `tokenizer_class`
    PreTrainedTokenizerFast, `chat_template` when given, and `extra` keys) into `directory`; returns the path."""
    hf = tokenizer.hf
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, i in (("eos_token", tokenizer.eos_id), ("pad_token", tokenizer.pad_id), ("mask_token", tokenizer._mask_id)):
        if i is not None:
            config[key] = hf.id_to_token(i)
    if chat_template is not None:
        ChatTemplate(chat_template)  # refuse a template that does not compile
        config["chat_template"] = chat_template
    config.update(extra)
    path = Path(directory) / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
