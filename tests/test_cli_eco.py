"""The CLI explains itself (help text and default on every option), speaks JSON, logs instead of printing, and
formats prompts with the checkpoint's chat template (`generate --chat`, `jdllm chat`); HF export writes what
transformers needs."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys

import pytest

from jdllm.cli import build_parser, main

ARITH = "arith-llada-tiny"  # the tests below read its answers; the default model is the word-problem one
Q = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
Q2 = "Ann has 3 pens. She finds 4. Then she loses 2. How many pens does Ann have?"


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["generate", "chat", "bench", "convert", "recipes"])
def test_every_option_has_help_and_shows_its_default(command):
    sub = _subparsers(build_parser())[command]
    text = sub.format_help()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.dest} has no help text"
        if action.option_strings:
            assert "default" in sub._get_formatter()._expand_help(action) or "default" in action.help, \
                f"{command} {action.option_strings[0]} does not show its default"
    assert "(default: 0)" in text or command in ("convert", "recipes")  # --seed / --verbose show theirs


def test_generate_json(capsys):
    assert main(["generate", "--model", ARITH, "--json", "-q", Q, Q2]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "arith-llada-tiny" and len(data["results"]) == 2
    first = data["results"][0]
    assert first["answer"].endswith("#### 14") and first["formatted_prompt"] == Q + "\n" and first["nfe"] >= 1
    assert len(first["tokens"]) == data["gen_length"]


def test_generate_chat_and_raw_and_errors(capsys, tmp_path):
    assert main(["generate", "--model", ARITH, "--chat", Q]) == 0
    assert capsys.readouterr().out.strip().endswith("#### 14")
    # a directory without a chat template: --chat is refused, naming the model
    import shutil
    from jdllm.shipped import assets_dir

    plain = tmp_path / "plain"
    shutil.copytree(assets_dir() / ARITH, plain)
    (plain / "tokenizer_config.json").unlink()
    assert main(["generate", "--chat", "--model", str(plain), Q]) == 2
    assert "has no chat_template" in capsys.readouterr().err


def test_verbosity_switch(capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="jdllm")
    assert main(["generate", "--model", ARITH, "-v", Q]) == 0
    assert any("nfe=" in m for m in caplog.messages)  # -v: per-prompt details
    assert logging.getLogger("jdllm").level == logging.DEBUG
    assert main(["generate", "--model", ARITH, "-q", Q]) == 0
    assert logging.getLogger("jdllm").level == logging.WARNING


def test_chat_reads_turns_from_stdin():
    r = subprocess.run([sys.executable, "-m", "jdllm.cli", "chat", "--model", ARITH, "--no-history", "--no-compile-cache"],
                       input=f"{Q}\n/reset\n{Q2}\n/exit\nignored\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["12+7=19. 19-5=14. #### 14", "3+4=7. 7-2=5. #### 5"]


def test_chat_loop_keeps_the_history():
    from jdllm.chat import chat_loop
    from jdllm.shipped import load_bundle

    bundle = load_bundle(ARITH)
    seen = []
    render = bundle.chat_template.render

    class Spy(type(bundle.chat_template)):
        def render(self, messages, add_generation_prompt=True, **kw):
            seen.append([m["role"] for m in messages])
            return render(messages, add_generation_prompt, **kw)

    bundle.chat_template = Spy(bundle.chat_template.source, bundle.chat_template.special_tokens)
    out = io.StringIO()
    chat_loop(bundle, io.StringIO(f"{Q}\n{Q}\n"), out, gen_length=32, block_length=32, steps=32)
    assert seen == [["user"], ["user", "assistant", "user"]]
    assert out.getvalue().splitlines()[0] == "12+7=19. 19-5=14. #### 14"


def test_hf_export_names_model_type_and_auto_map(tmp_path):
    import jdllm
    from jdllm.shipped import default_model_dir

    jdllm.save(jdllm.load(default_model_dir()), tmp_path / "hf", format="hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llada"
    assert config["auto_map"]["AutoModel"] == "GSAI-ML/LLaDA-8B-Instruct--modeling_llada.LLaDAModelLM"
    assert config["auto_map"]["AutoConfig"].endswith("configuration_llada.LLaDAConfig")
    assert jdllm.load(tmp_path / "hf").config == jdllm.load(default_model_dir()).config
