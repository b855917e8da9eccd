"""D2F asymmetric distillation (`jdllm.train.d2f`): the loss against a numpy hand computation of the official
`compute_llada_loss`, the teacher's / student's views, the monotone per-block mask ratios of
`generate_monotonic_pmasks` / `forward_process_length`, a 3-step run that exports a loadable block-causal
checkpoint, and the shipped student."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdllm
from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.shipped import load_bundle
from jdllm.tasks import make_problems
from jdllm.train.d2f import (
    D2FConfig, d2f_forward_process, d2f_loss, distill, distill_loss, make_student, sample_block_mask_ratios)
from jdllm.train.diffusion import default_tokenizer, export_llada, problems_to_sft
from jdllm.weights.hf import load_hf

P, G, BS = 32, 32, 8


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _hand_loss(student_logits, teacher_logits, masked, p_mask):
    """Official compute_llada_loss (self_align) in float64: F.cross_entropy(student[masked], softmax(teacher)[masked],
    reduction='none') / p_mask[masked], then .mean()."""
    s = np.asarray(student_logits, np.float64)[masked]
    t = np.exp(_log_softmax(np.asarray(teacher_logits, np.float64)))[masked]
    ce = -(t * _log_softmax(s)).sum(-1)
    return (ce / np.asarray(p_mask, np.float64)[masked]).mean()


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def data(tok):
    return problems_to_sft(tok, make_problems(64, "train", seed=0), P, G)


@pytest.fixture(scope="module")
def teacher(tok):
    cfg = ModelConfig(family="llada", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                      mlp_hidden_size=64, max_seq_len=P + G, mask_id=tok.mask_id, eos_id=tok.eos_id,
                      pad_id=tok.pad_id)
    return Transformer(cfg, rngs=nnx.Rngs(3))


def test_d2f_loss_hand_case():
    """Only masked positions count, each divided by its p_mask; targets are the teacher's probabilities."""
    student = np.array([[[0.0, 2.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 1.0]]], np.float32)
    teacher = np.array([[[0.0, 1.0, 0.0], [4.0, -2.0, 1.0], [1.0, 1.0, 1.0]]], np.float32)
    masked = np.array([[True, False, True]])
    p_mask = np.array([[0.25, 0.5, 0.8]], np.float32)
    loss, metrics = d2f_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(masked), jnp.asarray(p_mask))
    # by hand: position 0 -> CE(s0, softmax(t0)) / 0.25, position 2 -> CE(s2, uniform) / 0.8, mean of the two
    ce0 = -(np.exp(_log_softmax(teacher[0, 0].astype(np.float64))) * _log_softmax(student[0, 0].astype(np.float64))).sum()
    ce2 = -(_log_softmax(student[0, 2].astype(np.float64))).mean()
    np.testing.assert_allclose(float(loss), (ce0 / 0.25 + ce2 / 0.8) / 2, rtol=1e-5)
    assert float(metrics["agreement"]) == 0.5  # argmax student == teacher at position 0 (1), not at 2 (1 vs 0)
    # the unmasked position's logits do not matter
    student2 = student.copy()
    student2[0, 1] = [9.0, -9.0, 3.0]
    np.testing.assert_allclose(float(d2f_loss(jnp.asarray(student2), jnp.asarray(teacher), jnp.asarray(masked),
                                              jnp.asarray(p_mask))[0]), float(loss), rtol=1e-6)


def test_distill_loss_views(teacher, data):
    """The teacher sees the noisy canvas bidirectionally, the student block-causally; loss = hand formula."""
    student = make_student(teacher, BS)
    assert student.config.attention == "block_causal" and student.config.attention_block_size == BS
    # perturb the student so that teacher and student differ beyond the mask
    _, st = nnx.split(student)
    nnx.update(student, jax.tree.map(lambda x: x * 1.1, st))
    cfg = D2FConfig(block_size=BS)
    tokens, am, ans = (jnp.asarray(a[:4]) for a in (data.tokens, data.attention_mask, data.answer_mask))
    key = jax.random.key(5)
    loss, _ = distill_loss(student, teacher, tokens, am, ans, key, prompt_len=P, cfg=cfg)
    masked, p_mask = d2f_forward_process(key, ans, P, BS, cfg.p_min, cfg.p_max)
    noisy = jnp.where(masked, teacher.config.mask_id, tokens)
    t_logits = teacher(noisy, attention_mask=am)  # full attention
    s_logits = student(noisy, attention_mask=am, prompt_len=P)  # block-causal, blocks of BS
    np.testing.assert_allclose(float(loss), _hand_loss(s_logits, t_logits, np.asarray(masked), p_mask), rtol=1e-4)
    # a later block's tokens move the teacher's logits of the first answer block, not the student's
    later = noisy.at[:, P + BS:].set(jnp.where(noisy[:, P + BS:] == teacher.config.eos_id, 7, teacher.config.eos_id))
    first = slice(P, P + BS)
    s2 = student(later, attention_mask=am, prompt_len=P)
    t2 = teacher(later, attention_mask=am)
    np.testing.assert_allclose(np.asarray(s2[:, first]), np.asarray(s_logits[:, first]), atol=1e-5)
    assert np.abs(np.asarray(t2[:, first]) - np.asarray(t_logits[:, first])).max() > 1e-3


def test_block_mask_ratios():
    r = np.asarray(sample_block_mask_ratios(jax.random.key(0), 4096, 4, 0.2, 0.7))
    assert r.shape == (4096, 4)
    assert (np.diff(r, axis=1) >= 0).all()  # non-decreasing over blocks
    assert r.min() >= 0.2 and r.max() <= 0.7
    assert r[:, 0].min() < 0.22 and r[:, 0].max() > 0.68 and r[:, -1].max() > 0.69  # fills the range
    np.testing.assert_array_equal(r, np.asarray(sample_block_mask_ratios(jax.random.key(0), 4096, 4, 0.2, 0.7)))
    assert not np.array_equal(r, np.asarray(sample_block_mask_ratios(jax.random.key(1), 4096, 4, 0.2, 0.7)))
    assert sample_block_mask_ratios(jax.random.key(0), 3, 1).shape == (3, 1)


def test_forward_process(data):
    ans = jnp.asarray(np.repeat(data.answer_mask[:1], 2048, 0))
    masked, p = (np.asarray(x) for x in d2f_forward_process(jax.random.key(2), ans, P, BS))
    assert not masked[:, :P].any() and (p[:, :P] == 0).all()  # prompt never masked
    blocks = p[:, P:].reshape(-1, G // BS, BS)
    assert (blocks == blocks[..., :1]).all()  # one ratio per block
    ratios = blocks[..., 0]
    assert (np.diff(ratios, axis=1) >= 0).all() and ratios.min() >= 0.2 and ratios.max() <= 0.7
    # each token masked with its block's ratio: empirical rate per block == mean ratio per block
    rate = masked[:, P:].reshape(-1, G // BS, BS).mean(axis=(0, 2))
    np.testing.assert_allclose(rate, ratios.mean(0), atol=0.02)
    again = np.asarray(d2f_forward_process(jax.random.key(2), ans, P, BS)[0])
    np.testing.assert_array_equal(masked, again)


def test_three_step_run_exports_block_causal(teacher, data, tok, tmp_path):
    cfg = D2FConfig(steps=3, batch_size=4, block_size=BS, log_every=1, ckpt_every=2, peak_lr=1e-2, warmup_steps=1)
    result = distill(teacher, data, cfg, ckpt_dir=str(tmp_path / "ckpt"), log=lambda s: None)
    assert [h["step"] for h in result.history] == [1, 2, 3] and np.isfinite([h["loss"] for h in result.history]).all()
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), nnx.split(result.student)[1],
                         nnx.split(teacher)[1])
    assert max(jax.tree.leaves(moved)) > 0  # the student trained
    out = tmp_path / "student"
    export_llada(result.student, tok, str(out))
    conf = json.loads((out / "config.json").read_text())
    assert conf["attention"] == "block_causal" and conf["attention_block_size"] == BS
    loaded = load_hf(out)
    assert loaded.config.attention == "block_causal" and loaded.config.attention_block_size == BS
    x = jnp.asarray(data.tokens[:2])
    np.testing.assert_allclose(np.asarray(loaded(x, prompt_len=P)), np.asarray(result.student(x, prompt_len=P)),
                               atol=1e-5)


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(teacher, data, tmp_path):
    """Stopped at step 2 and resumed from its orbax checkpoint == 3 uninterrupted steps (same batches, noise)."""
    cfg = D2FConfig(steps=3, batch_size=4, block_size=BS, log_every=1, ckpt_every=2, peak_lr=1e-2, warmup_steps=1)
    straight = distill(teacher, data, cfg, log=lambda s: None)
    ckpt = str(tmp_path / "ckpt")
    distill(teacher, data, cfg, ckpt_dir=ckpt, stop_at=2, log=lambda s: None)
    resumed = distill(teacher, data, cfg, ckpt_dir=ckpt, log=lambda s: None)
    assert [h["step"] for h in resumed.history] == [3]
    np.testing.assert_allclose(np.asarray(resumed.student.wte), np.asarray(straight.student.wte), atol=1e-6)


def test_shipped_student_answers_readme_prompt():
    b = load_bundle("arith-llada-tiny-d2f")
    cfg = b.model.config
    assert cfg.attention == "block_causal" and cfg.attention_block_size == BS
    q = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    out = jdllm.generate(b.model, [b.encode_prompt(q)], gen_length=32, recipe="d2f", block_length=BS)
    assert b.decode_answer(out.tokens[0]).endswith("#### 14")
    assert out.nfe[0] < 32  # the pipeline commits several tokens per forward


def test_cli_dispatches_train_d2f(capsys):
    from jdllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "d2f", "--help"])
    assert e.value.code == 0 and "jdllm train d2f" in capsys.readouterr().out


def test_load_bundle_unknown_name():
    with pytest.raises(FileNotFoundError, match="arith-llada-tiny-d2f"):
        load_bundle("no-such-model")
