"""Text in, text out: a checkpoint's own tokenizer files, chat template and special ids (`jdllm.text`).

The tokenizer is built here with the `tokenizers` library; the template is LLaDA-8B-Instruct's (Llama-3 style)
`chat_template` string, and the expected prompts are written out by hand from that template.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from jdllm.tasks.arithmetic import CHAT_TEMPLATE, format_prompt
from jdllm.text import ChatTemplate, TemplateError, load_text

# GSAI-ML/LLaDA-8B-Instruct tokenizer_config.json "chat_template"
LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' "
    "+ message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|mdm_mask|>"]
WORDS = ["user", "assistant", "system", "hi", "there", "be", "brief", "\n\n", "ok", " "]


def tiny_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + ["<unk>"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n\n", behavior="isolated"),
                                                pre_tokenizers.Split(" ", behavior="isolated")])
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tk


@pytest.fixture
def llada_like_dir(tmp_path):
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<|startoftext|>", "__type": "AddedToken"},  # AddedToken form, as HF writes it
        "eos_token": "<|eot_id|>", "pad_token": "<|endoftext|>", "chat_template": LLADA_TEMPLATE}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    return tmp_path


def test_llada_template_renders_and_tokenizes_as_the_checkpoint_would(llada_like_dir):
    text = load_text(llada_like_dir)
    messages = [{"role": "system", "content": "be brief "}, {"role": "user", "content": " hi there"}]
    prompt = text.apply_chat_template(messages)
    assert prompt == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = text.tokenizer.encode(prompt)
    v = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    assert ids == [v["<|startoftext|>"], v["<|start_header_id|>"], v["system"], v["<|end_header_id|>"], v["\n\n"],
                   v["be"], v[" "], v["brief"], v["<|eot_id|>"], v["<|start_header_id|>"], v["user"],
                   v["<|end_header_id|>"], v["\n\n"], v["hi"], v[" "], v["there"], v["<|eot_id|>"],
                   v["<|start_header_id|>"], v["assistant"], v["<|end_header_id|>"], v["\n\n"]]
    no_gen = text.apply_chat_template(messages[1:], add_generation_prompt=False)
    assert no_gen == "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>"


def test_special_ids_come_from_the_checkpoint(llada_like_dir):
    text = load_text(llada_like_dir)
    # EoT from tokenizer_config's eos_token, EOS from generation_config.json; both end an answer
    assert text.stop_ids == (SPECIALS.index("<|eot_id|>"), 1)
    assert text.tokenizer.mask_id == SPECIALS.index("<|mdm_mask|>")
    ok, hi = len(SPECIALS) + WORDS.index("ok"), len(SPECIALS) + WORDS.index("hi")
    assert text.answer_text([ok, SPECIALS.index("<|eot_id|>"), hi]) == "ok"
    assert text.answer_text([hi, 1, ok]) == "hi"


def test_template_sources_and_errors(llada_like_dir):
    config = json.loads((llada_like_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ 'D' }}"}]
    (llada_like_dir / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_text(llada_like_dir).apply_chat_template([{"role": "user", "content": "x"}]) == "D"
    (llada_like_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")  # takes precedence
    assert load_text(llada_like_dir).apply_chat_template([{"role": "user", "content": "x"}]) == "x!"
    (llada_like_dir / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(TemplateError, match=str(llada_like_dir)):
        load_text(llada_like_dir)
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}")
    with pytest.raises(TemplateError, match="user first"):
        strict.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(TypeError, match="messages"):
        strict.render("hi")


def test_shipped_model_template_lives_in_its_tokenizer_config():
    from jdllm.shipped import assets_dir

    d = assets_dir() / "arith-llada-tiny"
    assert json.loads((d / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert "prompt_template" not in json.loads((d / "generation_config.json").read_text())
    text = load_text(d)
    q = "Tom has 12 apples. He buys 7. How many apples does Tom have?  "
    assert text.apply_chat_template([{"role": "user", "content": q}]) == format_prompt(q)
