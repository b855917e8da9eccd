"""Masked-diffusion SFT: the loss falls, checkpoints resume exactly, the greedy sampler and the LLaDA export."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.tasks import make_problems
from jdllm.weights.hf import load_hf
from jdllm.train.diffusion import (
    TrainConfig, batch_indices, default_tokenizer, diffusion_loss, evaluate, export_llada,
    fourier_number_init, make_greedy_sampler, problems_to_sft, train, transfer_schedule)

P, G = 96, 64


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def data(tok):
    return problems_to_sft(tok, make_problems(256, "train", seed=0), P, G)


def tiny_cfg(tok, **kw):
    base = dict(family="llada", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                mlp_hidden_size=64, max_seq_len=P + G, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    base.update(kw)
    return ModelConfig(**base)


def test_sft_layout(tok, data):
    assert data.tokens.shape == (256, P + G)
    row = 0
    prompt = data.tokens[row, :P][data.attention_mask[row, :P]]
    assert tok.decode(prompt).endswith("?\n")
    assert not data.attention_mask[row, 0]  # left padding is masked out
    assert data.answer_mask[row].sum() == G and not data.answer_mask[row, :P].any()
    ans = data.tokens[row, P:]
    assert "####" in tok.decode_until_eos(ans)
    first_eos = list(ans).index(tok.eos_id)
    assert (ans[first_eos:] == tok.eos_id).all()  # EOS padding fills the tail


def test_loss_never_masks_the_prompt(tok, data):
    model = Transformer(tiny_cfg(tok), rngs=nnx.Rngs(0))
    b = slice(0, 8)
    loss, m = diffusion_loss(model, data.tokens[b], data.attention_mask[b], data.answer_mask[b], jax.random.key(0),
                             mask_id=tok.mask_id, eps=1e-3)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_training_makes_the_loss_fall(tok, data):
    tc = TrainConfig(steps=40, batch_size=16, peak_lr=3e-3, warmup_steps=5, log_every=5)
    res = train(tiny_cfg(tok), tc, data, progress=False, log=lambda s: None)
    losses = [h["loss"] for h in res.history]
    assert res.step == 40 and len(losses) == 8
    assert losses[-1] < 0.6 * losses[0], losses


def _params(model):
    return jax.tree.leaves(nnx.split(model)[1])


def test_resume_from_checkpoint_continues_at_the_right_step(tok, data, tmp_path):
    cfg = tiny_cfg(tok)
    tc = TrainConfig(steps=6, batch_size=8, peak_lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=2)
    quiet = lambda s: None  # noqa: E731
    straight = train(cfg, tc, data, progress=False, log=quiet)
    ckpt = str(tmp_path / "ckpt")
    first = train(cfg, tc, data, ckpt_dir=ckpt, stop_at=4, progress=False, log=quiet)
    assert first.step == 4
    logs = []
    second = train(cfg, tc, data, ckpt_dir=ckpt, progress=False, log=logs.append)
    assert any("resumed" in s and "step 4" in s for s in logs), logs
    assert [h["step"] for h in second.history] == [5, 6]
    assert second.step == 6
    # the interrupted + resumed run is the uninterrupted run (same data position, noise and optimiser state)
    for a, b in zip(_params(straight.model), _params(second.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert [h["loss"] for h in second.history] == pytest.approx([h["loss"] for h in straight.history[4:]],
                                                                rel=1e-4)


def test_batch_indices_are_a_function_of_step():
    a = batch_indices(10, 4, 3, seed=0)
    assert (a == batch_indices(10, 4, 3, seed=0)).all()
    epoch = np.concatenate([batch_indices(12, 4, s, seed=1) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))  # one epoch sees every row once


def test_transfer_schedule():
    assert transfer_schedule(32, 32).tolist() == [1] * 32
    assert transfer_schedule(32, 5).tolist() == [7, 7, 6, 6, 6]


def test_greedy_sampler_commits_one_token_per_step(tok):
    cfg = tiny_cfg(tok)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    prompts = np.full((2, 8), tok.pad_id, np.int32)
    prompts[:, 3:] = np.asarray(tok.encode("ab cd"))
    mask = prompts != tok.pad_id
    for steps in (4, 8):
        out = make_greedy_sampler(graphdef, cfg.mask_id, gen_length=8, block_length=4, steps=steps)(
            params, prompts, mask)
        assert out.shape == (2, 8)
    # 2 steps per block of 4 -> 2 tokens per step; 1 step per block of 4 would leave nothing masked either
    out = make_greedy_sampler(graphdef, cfg.mask_id, gen_length=8, block_length=4, steps=2)(params, prompts, mask)
    assert out.shape == (2, 8)
    acc = evaluate(model, make_problems(4, "test", seed=0), gen_length=32, block_length=32, tokenizer=tok)
    assert 0.0 <= acc <= 1.0


def test_export_is_llada_layout_and_round_trips(tok, tmp_path):
    cfg = tiny_cfg(tok, n_layers=2)
    model = Transformer(cfg, rngs=nnx.Rngs(2))
    export_llada(model, tok, str(tmp_path))
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["model_type"] == "llada" and conf["architectures"] == ["LLaDAModelLM"]
    for key in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "rope_theta", "rms_norm_eps",
                "vocab_size", "embedding_size", "max_sequence_length", "mask_token_id", "eos_token_id",
                "pad_token_id"):
        assert key in conf
    assert conf["weight_tying"] is False and conf["include_bias"] is False and conf["block_type"] == "llama"
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["model.transformer.wte.weight"].shape == (cfg.vocab_size, 32)
    assert tensors["model.transformer.ff_out.weight"].shape == (cfg.vocab_size, 32)  # torch [out, in]
    assert tensors["model.transformer.blocks.1.ff_proj.weight"].shape == (64, 32)
    assert len(tensors) == 3 + 9 * 2
    back = load_hf(str(tmp_path))
    x = np.asarray([tok.encode("12+7=19. #### 19")], np.int32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    assert (tmp_path / "tokenizer.json").exists()


def test_fourier_number_init_seeds_only_number_rows(tok):
    """Number n's embedding row and head column start with [cos(2 pi n / T), sin(2 pi n / T)]; nothing else moves."""
    import math

    model = Transformer(tiny_cfg(tok), rngs=nnx.Rngs(0))
    before = nnx.to_pure_dict(nnx.split(model)[1])
    ids = [tok.encode(str(n))[0] for n in range(100)]
    graphdef, params = nnx.split(model)
    params = fourier_number_init(params, ids, periods=(10, 100), embed_scale=0.5, head_scale=2.0)
    after = nnx.to_pure_dict(params)
    wte, head = np.asarray(after["wte"]), np.asarray(after["ff_out"]["kernel"])
    n = 37
    want = np.array([math.cos(2 * math.pi * n / 10), math.cos(2 * math.pi * n / 100),
                     math.sin(2 * math.pi * n / 10), math.sin(2 * math.pi * n / 100)], np.float32)
    np.testing.assert_allclose(wte[ids[n], :4], 0.5 * want, atol=1e-6)
    np.testing.assert_allclose(head[:4, ids[n]], 2.0 * want, atol=1e-6)
    np.testing.assert_array_equal(wte[ids[n], 4:], np.asarray(before["wte"])[ids[n], 4:])
    others = np.setdiff1d(np.arange(tok.vocab_size), ids)
    np.testing.assert_array_equal(wte[others], np.asarray(before["wte"])[others])
    np.testing.assert_array_equal(head[:, others], np.asarray(before["ff_out"]["kernel"])[:, others])
    np.testing.assert_array_equal(np.asarray(after["blocks"][0]["q_proj"]["kernel"]),
                                  np.asarray(before["blocks"][0]["q_proj"]["kernel"]))
    with pytest.raises(ValueError, match="do not fit"):
        fourier_number_init(params, ids, periods=tuple(range(1, 40)))


def test_cli_train_passes_options_through(capsys):
    """`jdllm train --fresh --steps N ...` reaches the training script's parser (options before any positional)."""
    from jdllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--fresh" in out and "--steps" in out and "--fourier-periods" in out
