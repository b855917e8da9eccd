"""Masked-diffusion SFT: the loss falls, checkpoints resume exactly, the greedy sampler and the LLaDA export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer
from jdllm.tasks import make_problems
from jdllm.weights.hf import load_hf
from jdllm.train.diffusion import (
    TrainConfig, batch_indices, bucketed_batch_indices, default_tokenizer, diffusion_loss, draw_mask, evaluate, export_llada,
    fourier_number_init, make_greedy_sampler, problems_to_sft, sft_loss, train, transfer_schedule,
    trim_padding, focus_rows, mask_candidates, read_ledger, SFTData)

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


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _hand_sft_loss(logits, tokens, masked, p_mask, answer_mask):
    """LLaDA GUIDELINES.md SFT, in numpy float64: token_loss = CE / p_mask on masked positions;
    loss = sum(token_loss / answer_length_of_its_row) / batch_size."""
    ce = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), tokens[..., None], -1)[..., 0]
    answer_len = answer_mask.sum(-1)
    total = 0.0
    for b in range(tokens.shape[0]):
        for i in range(tokens.shape[1]):
            if masked[b, i]:
                total += ce[b, i] / p_mask[b] / answer_len[b]
    return total / tokens.shape[0], ce


@pytest.fixture(scope="module")
def loss_case():
    """Two rows of 7 positions, vocab 5: row 0 has a 3-token prompt (answer length 4), row 1 a 4-token prompt
    (answer length 3), so per-row normalisation differs from dividing by the total answer length."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 7, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, size=(2, 7)).astype(np.int32)
    answer_mask = np.zeros((2, 7), bool)
    answer_mask[0, 3:] = True
    answer_mask[1, 4:] = True
    masked = np.zeros((2, 7), bool)
    masked[0, [3, 5]] = True
    masked[1, [4, 5, 6]] = True
    p_mask = np.array([0.25, 0.8], np.float32)
    return logits, tokens, masked, p_mask, answer_mask


def test_sft_loss_is_the_llada_objective_by_hand(loss_case):
    logits, tokens, masked, p_mask, answer_mask = loss_case
    loss, m = _sft(*loss_case)
    want, ce = _hand_sft_loss(*loss_case)
    # by hand: row 0 (ce[0,3] + ce[0,5]) / 0.25 / 4, row 1 (ce[1,4] + ce[1,5] + ce[1,6]) / 0.8 / 3, mean of the two
    assert want == pytest.approx(((ce[0, 3] + ce[0, 5]) / 0.25 / 4 + ce[1, 4:].sum() / 0.8 / 3) / 2)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["loss"]) == float(loss)
    assert float(m["masked_ce"]) == pytest.approx(ce[masked].mean(), rel=1e-5)
    hits = logits.argmax(-1) == tokens
    assert float(m["masked_acc"]) == pytest.approx(hits[masked].mean())


def test_sft_loss_weight_is_one_over_p_mask(loss_case):
    logits, tokens, masked, p_mask, answer_mask = loss_case
    only_row0 = masked & (np.arange(2)[:, None] == 0)
    base = float(_sft(logits, tokens, only_row0, p_mask, answer_mask)[0])
    halved = float(_sft(logits, tokens, only_row0, p_mask * np.array([0.5, 1.0], np.float32), answer_mask)[0])
    assert halved == pytest.approx(2 * base, rel=1e-6)
    loss0, m0 = _sft(logits, tokens, np.zeros_like(masked), p_mask, answer_mask)
    assert float(loss0) == 0.0 and float(m0["masked_ce"]) == 0.0 and float(m0["masked_acc"]) == 0.0  # not NaN
    one = np.zeros_like(masked)
    one[1, 5] = True
    _, m1 = _sft(logits, tokens, one, p_mask, answer_mask)
    ce15 = -_log_softmax(logits[1, 5].astype(np.float64))[tokens[1, 5]]
    assert float(m1["masked_ce"]) == pytest.approx(ce15, rel=1e-5)  # the mean over one masked position


def test_sft_loss_short_and_empty_answer_rows():
    """A row whose answer is one token is divided by 1; a row with no answer contributes 0 (not NaN) and still
    counts in the batch mean, as in LLaDA's sum(...) / batch_size."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, size=(3, 4)).astype(np.int32)
    answer_mask = np.zeros((3, 4), bool)
    answer_mask[0, 3] = True  # answer length 1
    answer_mask[1, 1:] = True  # answer length 3
    masked = answer_mask.copy()  # row 2: no answer, nothing masked
    p_mask = np.array([0.5, 0.5, 0.5], np.float32)
    ce = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), tokens[..., None], -1)[..., 0]
    want = (ce[0, 3] / 0.5 / 1 + ce[1, 1:].sum() / 0.5 / 3 + 0.0) / 3
    assert float(_sft(logits, tokens, masked, p_mask, answer_mask)[0]) == pytest.approx(want, rel=1e-5)


_draw = jax.jit(draw_mask, static_argnames=("stratified_t",))
_sft = jax.jit(sft_loss)


def test_draw_mask_never_masks_the_prompt_and_masks_the_answer_with_prob_p():
    b, l, prompt = 8, 4000, 1000
    answer_mask = np.zeros((b, l), bool)
    answer_mask[:, prompt:] = True
    answer_mask[3, : prompt + 500] = False  # one row with a longer prompt
    for seed in range(3):
        masked, p_mask = _draw(jax.random.key(seed), jnp.asarray(answer_mask), eps=0.1)
        masked, p_mask = np.asarray(masked), np.asarray(p_mask)
        assert not masked[~answer_mask].any()
        n = answer_mask.sum(-1)
        frac = masked.sum(-1) / n
        assert np.all(np.abs(frac - p_mask) < 5 * np.sqrt(p_mask * (1 - p_mask) / n) + 1e-6), (frac, p_mask)
        # stratified t: p_mask = 0.9 t + 0.1 with one t in each [i/8, (i+1)/8), in shuffled row order
        t = (p_mask - 0.1) / 0.9
        assert np.sort(np.floor(t * b + 1e-4)).tolist() == list(range(b)), t
        assert (np.argsort(t) != np.arange(b)).any() or seed  # rows are shuffled (at least for one key)


def test_draw_mask_eps_and_unstratified_t():
    answer_mask = jnp.ones((8, 4000), bool)
    masked, p_mask = _draw(jax.random.key(0), answer_mask, eps=1.0)
    assert np.asarray(masked).all() and np.asarray(p_mask).tolist() == [1.0] * 8  # p_mask = (1 - 1) t + 1
    _, p = _draw(jax.random.key(0), answer_mask, eps=0.0, stratified_t=False)
    p = np.asarray(p)
    assert ((0 <= p) & (p < 1)).all() and np.sort(np.floor(p * 8)).tolist() != list(range(8))


class _RecordingModel:
    """Stands in for the Transformer: records its input and returns fixed logits."""

    def __init__(self, logits):
        self.logits, self.seen = logits, []

    def __call__(self, noisy, attention_mask):
        self.seen.append((noisy, attention_mask))
        return jnp.asarray(self.logits)


def test_diffusion_loss_feeds_the_masked_rows_and_scores_them_by_hand(tok, data):
    rows = slice(0, 4)
    tokens, attn, ans = data.tokens[rows], data.attention_mask[rows], data.answer_mask[rows]
    logits = np.random.default_rng(1).normal(size=(*tokens.shape, tok.vocab_size)).astype(np.float32)
    key = jax.random.key(3)

    @jax.jit
    def loss_and_model_input(tokens, attn, ans, key, logits):
        model = _RecordingModel(logits)
        loss, _ = diffusion_loss(model, tokens, attn, ans, key, mask_id=tok.mask_id, eps=1e-3)
        return loss, *model.seen[0], *draw_mask(key, ans, eps=1e-3)

    loss, noisy, seen_attn, masked, p_mask = map(np.asarray, loss_and_model_input(tokens, attn, ans, key, logits))
    assert (noisy[:, :P] == tokens[:, :P]).all()  # the prompt reaches the model unmasked
    assert ((noisy == tok.mask_id) == masked).all() and masked[:, P:].any()
    assert (noisy[~masked] == tokens[~masked]).all() and (seen_attn == attn).all()
    want, _ = _hand_sft_loss(logits, tokens, masked, p_mask, ans)
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_focus_rows_mask_only_their_focus_positions(tok, data):
    """Focus rows (drawn per step from the seed) may mask only their focus positions, other rows the whole
    answer; the loss is still normalised by each row's answer length."""
    rows = focus_rows(64, step=3, seed=0, rate=0.5)
    assert (rows == focus_rows(64, 3, 0, 0.5)).all() and 16 < rows.sum() < 48
    assert not (rows == focus_rows(64, 4, 0, 0.5)).all() and not focus_rows(64, 3, 0, 0.0).any()
    tokens, attn, ans = data.tokens[:8], data.attention_mask[:8], data.answer_mask[:8]
    focus = np.zeros_like(ans)
    focus[:, [P + 1, P + 3]] = True
    focus[:, 0] = True  # a prompt position: never a candidate
    pick = np.array([True, False] * 4)
    cand = mask_candidates(ans, focus, pick)
    assert (cand[pick] == (focus & ans)[pick]).all() and (cand[~pick] == ans[~pick]).all()
    logits = np.random.default_rng(1).normal(size=(*tokens.shape, tok.vocab_size)).astype(np.float32)

    @jax.jit
    def run(key):
        model = _RecordingModel(logits)
        loss, _ = diffusion_loss(model, tokens, attn, ans, key, mask_id=tok.mask_id, eps=1e-3, candidates=cand)
        return loss, model.seen[0][0], *draw_mask(key, cand, eps=1e-3)

    for seed in range(3):
        loss, noisy, masked, p_mask = map(np.asarray, run(jax.random.key(seed)))
        assert ((noisy == tok.mask_id) == masked).all() and not (masked & ~cand).any() and masked[pick].any()
        want, _ = _hand_sft_loss(logits, tokens, masked, p_mask, ans)
        assert float(loss) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="focus_mask"):
        train(tiny_cfg(tok), TrainConfig(steps=1, batch_size=4, focus_rate=0.5), data, progress=False,
              log=lambda s: None)


def test_drill_steps_train_on_the_drill_rows_first(tok, data):
    """`drill_steps`: the first steps draw from the drill rows (another width, focus positions only), then the
    task's rows from their own step 0; without drill rows it refuses."""
    with pytest.raises(ValueError, match="drill"):
        train(tiny_cfg(tok), TrainConfig(steps=2, batch_size=4, drill_steps=1), data, progress=False,
              log=lambda s: None)
    drill = SFTData(data.tokens[:, P - 4:], data.attention_mask[:, P - 4:], data.answer_mask[:, P - 4:], 4, G)
    drill.focus_mask = np.zeros(drill.tokens.shape, bool)
    drill.focus_mask[:, 4] = True  # the first answer token only
    quiet = {"progress": False, "log": lambda s: None}
    res = train(tiny_cfg(tok), TrainConfig(steps=4, batch_size=4, drill_steps=2, log_every=1), data, drill=drill,
                **quiet)
    assert res.step == 4 and len(res.history) == 4 and all(np.isfinite(h["loss"]) for h in res.history)
    # two drill steps are two steps of training on the drill rows with every row a focus row
    drilled = train(tiny_cfg(tok), TrainConfig(steps=2, batch_size=4, drill_steps=2), data, drill=drill, **quiet)
    direct = train(tiny_cfg(tok), TrainConfig(steps=2, batch_size=4, focus_rate=1.0), drill, **quiet)
    plain = train(tiny_cfg(tok), TrainConfig(steps=2, batch_size=4), drill, **quiet)
    leaves = [jax.tree_util.tree_leaves(nnx.state(r.model)) for r in (drilled, direct, plain)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[2]))


def test_phase_of_interleaves_drill_steps_and_reads_each_stream_in_order():
    from jdllm.train.diffusion import phase_of

    phases = [phase_of(s, 3, 4) for s in range(3 + 4 * 5)]
    assert [d for d, _ in phases[:3]] == [True] * 3
    assert [d for d, _ in phases[3:]] == [False, False, False, True] * 5  # every 4th step after the drill phase
    assert [k for d, k in phases if d] == list(range(3 + 5))  # the drill stream continues where it stopped
    assert [k for d, k in phases if not d] == list(range(15))  # the task stream counts from 0, no gaps
    assert [phase_of(s, 2, 0) for s in range(4)] == [(True, 0), (True, 1), (False, 0), (False, 1)]


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


def test_ledger_counts_an_invocation_that_never_returned(tok, data, tmp_path):
    """A run killed after a checkpoint (its caller never got to record anything) still counts its time: the loop
    marks the ledger at every checkpoint, and the resumed run adds to the mark of the checkpoint it resumes."""
    cfg = tiny_cfg(tok)
    tc = TrainConfig(steps=6, batch_size=8, peak_lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=2)
    quiet = lambda s: None  # noqa: E731
    ckpt = str(tmp_path / "ckpt")
    first = train(cfg, tc, data, ckpt_dir=ckpt, stop_at=4, progress=False, log=quiet)  # "killed" at step 4
    meta = json.loads((tmp_path / "ckpt" / "train_meta.json").read_text())
    assert meta["step"] == 4 and sorted(meta["checkpoints"], key=int) == ["2", "4"]
    at4 = meta["checkpoints"]["4"]
    assert 0 < at4 <= first.seconds
    second = train(cfg, tc, data, ckpt_dir=ckpt, progress=False, log=quiet)
    history, seconds = read_ledger(ckpt, second)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert seconds == pytest.approx(at4 + second.seconds, abs=0.5)
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(history, history[1:]))
    assert history[4]["seconds"] >= at4  # step 5's clock starts at checkpoint 4's mark


def test_batch_indices_are_a_function_of_step():
    a = batch_indices(10, 4, 3, seed=0)
    assert (a == batch_indices(10, 4, 3, seed=0)).all()
    epoch = np.concatenate([batch_indices(12, 4, s, seed=1) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))  # one epoch sees every row once


def test_bucketed_batches_cover_an_epoch_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 90, size=203)
    per_epoch = 203 // 8
    epoch = [bucketed_batch_indices(lengths, 8, s, seed=2, pool=5) for s in range(per_epoch)]
    flat = np.concatenate(epoch)
    assert len(set(flat.tolist())) == len(flat) == per_epoch * 8  # each row at most once per epoch
    assert all((b == bucketed_batch_indices(lengths, 8, s, seed=2, pool=5)).all() for s, b in enumerate(epoch))
    spread = np.mean([np.ptp(lengths[b]) for b in epoch])
    shuffled = np.mean([np.ptp(lengths[batch_indices(203, 8, s, seed=2)]) for s in range(per_epoch)])
    assert spread < shuffled / 3  # batches of similar length
    nxt = bucketed_batch_indices(lengths, 8, per_epoch, seed=2, pool=5)  # the next epoch reshuffles
    assert not (nxt == epoch[0]).all()
    with pytest.raises(ValueError, match="one batch"):
        bucketed_batch_indices(lengths[:3], 8, 0, seed=0, pool=5)


def test_trimmed_padding_computes_the_same_logits(tok, data):
    """Cutting a batch's left padding to its longest prompt (rounded to 16) leaves every row's logits unchanged."""
    idx = np.argsort(data.attention_mask[:, :P].sum(-1))[:4]  # the four shortest prompts
    tokens, mask, answer = trim_padding(data, idx, 16)
    longest = data.attention_mask[idx, :P].sum(-1).max()
    assert tokens.shape[1] == -(-longest // 16) * 16 + G < P + G
    assert (tokens[:, -G:] == data.tokens[idx, P:]).all() and (answer == data.answer_mask[idx, -tokens.shape[1]:]).all()
    model = Transformer(tiny_cfg(tok), rngs=nnx.Rngs(0))
    full = model(jnp.asarray(data.tokens[idx]), attention_mask=jnp.asarray(data.attention_mask[idx]))
    cut = model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(cut)[:, -G:], np.asarray(full)[:, -G:], rtol=2e-5, atol=2e-5)


def test_transfer_schedule():
    assert transfer_schedule(32, 32).tolist() == [1] * 32
    assert transfer_schedule(32, 5).tolist() == [7, 7, 6, 6, 6]


def _llada_greedy_reference(forward, prompts, mask_id, gen_length, block_length, steps):
    """LLaDA's official `generate` (low_confidence remasking, temperature 0), written from generate.py in numpy:
    per block, `get_num_transfer_tokens` splits the block's masks evenly over its steps (remainder to the first
    steps); each step commits the k masked positions of the current block with the highest softmax probability
    of their argmax token."""
    b, p = prompts.shape
    x = np.concatenate([prompts, np.full((b, gen_length), mask_id, prompts.dtype)], axis=1)
    spb = steps // (gen_length // block_length)
    for blk in range(gen_length // block_length):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        n_masked = (x[:, lo:hi] == mask_id).sum(-1)
        for i in range(spb):
            k = n_masked // spb + (i < n_masked % spb)
            logits = np.asarray(forward(x), np.float64)
            x0 = logits.argmax(-1)
            prob = np.exp(logits - logits.max(-1, keepdims=True))
            prob = (prob / prob.sum(-1, keepdims=True))[np.arange(b)[:, None], np.arange(x.shape[1]), x0]
            prob[:, hi:] = -np.inf
            conf = np.where(x == mask_id, prob, -np.inf)
            for r in range(b):
                for j in np.argsort(-conf[r], kind="stable")[: k[r]]:
                    x[r, j] = x0[r, j]
    return x[:, p:]


def mask_lengths_differ(mask):
    return len(set(mask.sum(-1).tolist())) > 1


def test_greedy_sampler_is_llada_low_confidence_decoding(tok):
    cfg = tiny_cfg(tok)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    prompts = np.full((2, 8), tok.pad_id, np.int32)
    for r, text in enumerate(("ab cd", "12 + 34 =")):  # ragged left padding
        ids = tok.encode(text)
        prompts[r, 8 - len(ids):] = ids
    assert mask_lengths_differ(prompts != tok.pad_id)
    mask = prompts != tok.pad_id
    valid = np.concatenate([mask, np.ones((2, 8), bool)], axis=1)
    forward = jax.jit(lambda x: nnx.merge(graphdef, params)(x, attention_mask=valid))
    for steps in (8, 6, 2):  # per block of 4: 1 token per step; 2, 1, 1 (remainder first); 4 at once
        out = np.asarray(make_greedy_sampler(graphdef, cfg.mask_id, gen_length=8, block_length=4, steps=steps)(
            params, prompts, mask))
        ref = _llada_greedy_reference(forward, prompts, cfg.mask_id, 8, 4, steps)
        assert (out == ref).all(), (steps, out, ref)
        assert not (out == cfg.mask_id).any()
    with pytest.raises(ValueError, match="steps=3"):
        make_greedy_sampler(graphdef, cfg.mask_id, gen_length=8, block_length=4, steps=3)
    make_greedy_sampler(graphdef, cfg.mask_id, gen_length=64)  # default blocks of 32 (nothing compiles yet)
    with pytest.raises(ValueError, match="block_length=32"):
        make_greedy_sampler(graphdef, cfg.mask_id, gen_length=48)


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
