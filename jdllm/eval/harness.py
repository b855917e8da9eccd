"""jdllm as an lm-evaluation-harness model, registered under the name `jdllm`.

    jdllm eval --model jdllm --model_args pretrained=DIR,recipe=fast_dllm_dual_parallel \
        --tasks jdllm_arith --include_path jdllm/eval/tasks --limit 50

`jdllm eval` (or `python -m jdllm.eval`) is lm-eval's own command line with this model registered: lm-eval
0.4 has no plugin discovery for out-of-tree models (EleutherAI/lm-evaluation-harness issue 3282), so, as
LLaDA's `eval_llada.py` does, the model is registered and lm-eval's `cli_evaluate` runs. From Python,
`import jdllm.eval.harness` registers it for `lm_eval.simple_evaluate(model="jdllm", ...)`.

- `generate_until`: requests are grouped by their generation keywords, sorted by prompt length and run in
  batches of `batch_size` (the last batch filled with repeats so every batch compiles once); each answer is cut
  at the checkpoint's stop ids (EOS / EoT) and then at the first of the request's `until` strings. Any recipe
  (`recipe=`) and any `jdllm.generate` decode keyword are model_args. Generated tokens/s, NFE and tokens per
  forward are logged per call and kept in `stats`.
- `loglikelihood`: LLaDA's Monte-Carlo estimate of the masked-diffusion ELBO (`eval_llada.py`
  `get_log_likelihood` / `_forward_process`, arXiv 2502.09992 Eq. 6): `mc_num` samples in batches of
  `mc_batch_size`; in a batch of b rows a random k in 1..T gives evenly spread mask counts
  x_i = ((round(k + i T / b) - 1) mod T) + 1 over the T continuation tokens, each row masks x_i random
  continuation positions, and the estimate is minus the mean over batches of
  (1/b) sum_i sum_masked -log p(token) / (x_i / T). The draws of `batch_size` requests run as one forward. The draws of a request are seeded by (seed, its context),
  so the choices of one item share them (common random numbers). `check_greedy=True` also reports whether greedy decoding
  of the continuation (one token per step, most confident first) reproduces it.
- `loglikelihood_rolling` (perplexity tasks): the same ELBO summed over windows of at most `max_length` tokens
  (`rolling_windows`): a lower bound on log p, so the perplexity it gives is an upper bound.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from typing import Any, Sequence

import numpy as np

from jdllm.log import get_logger

_LOG = get_logger(__name__)

# jdllm.generate keywords a --model_args string may set (besides recipe, gen_length, seed).
DECODE_KEYWORDS = ("block_length", "steps", "temperature", "remasking", "cfg_scale", "threshold", "factor",
                   "factor_quirk", "alg", "alg_temp", "eps", "cache", "refresh_every", "eos_early_stop")
# Generation keywords of lm-eval tasks: `until` and `max_gen_toks` are used; greedy decoding is jdllm's default.
_GEN_KWARGS_USED = ("until", "max_gen_toks", "do_sample", "temperature")

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # the `eval` extra is not installed
    raise ImportError("jdllm.eval needs lm-evaluation-harness: pip install 'jdllm[eval]'") from e


def _none_if_none_text(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() in ("none", "null") else value


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any non-empty string of `until`."""
    cuts = [text.find(s) for s in until if s and s in text]
    return text[: min(cuts)] if cuts else text


def context_key(prefix: Sequence[int]) -> int:
    """A stable 63-bit key of a context's token ids: the Monte-Carlo draws of a request are seeded by (seed,
    key), so the continuations of one context (the choices of a multiple-choice item) are scored on the same
    draws; common random numbers make their comparison far less noisy than independent draws."""
    digest = hashlib.blake2b(np.asarray(prefix, np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def mask_counts(k: int, target_len: int, b: int) -> np.ndarray:
    """LLaDA's evenly spread mask counts of one MC batch: x_i = ((round(k + i * T / b) - 1) mod T) + 1."""
    x = np.round(np.linspace(float(k), k + (b - 1) * (target_len / b), b)).astype(np.int64)
    return ((x - 1) % target_len) + 1


@dataclasses.dataclass(frozen=True)
class Draws:
    """The Monte-Carlo draws of one loglikelihood request: `is_mask` [mc_num, L] over `seq` = prefix + target,
    `weight` [mc_num] = 1 / p_mask = T / (masked count) per row."""

    prefix: list[int]
    target: list[int]
    seq: np.ndarray
    is_mask: np.ndarray
    weight: np.ndarray


@functools.cache
def _picked_logp_fn():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def picked(logits, tokens):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]

    return picked


def _picked_logp(logits, tokens):
    """log p(tokens) under `logits` ([b, L, V] -> [b, L]), one compiled program per shape."""
    return _picked_logp_fn()(logits, tokens)


@register_model("jdllm")
class JdllmLM(LM):
    """lm-eval model over a `jdllm.load_bundle` checkpoint (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, recipe: str | None = None, gen_length: int | None = None,
                 batch_size: int | str = 16, mc_num: int = 128, mc_batch_size: int = 32,
                 check_greedy: bool = False, seed: int = 0, dtype: str | None = None, lora: str | None = None,
                 max_length: int | None = None, device: str | None = None, max_batch_size: int | None = None,
                 **decode: Any):
        super().__init__()
        from jdllm.shipped import load_bundle

        unknown = sorted(set(decode) - set(DECODE_KEYWORDS))
        if unknown:
            raise TypeError(f"jdllm model_args: unknown keyword {unknown[0]!r}; allowed: pretrained, recipe, "
                            f"gen_length, batch_size, mc_num, mc_batch_size, check_greedy, seed, dtype, lora, "
                            f"max_length, {', '.join(DECODE_KEYWORDS)}")
        if device not in (None, "cpu", "cuda", "tpu") and not str(device).startswith(("cuda:", "tpu:")):
            raise ValueError(f"jdllm model_args: device {device!r} is not a device name")
        if device is not None:
            _LOG.info(f"jdllm: device={device!r} is not used; JAX places the model on its default device")
        self.batch_size = self._positive("batch_size", 16 if str(batch_size).startswith("auto") else batch_size)
        self.mc_num = self._positive("mc_num", mc_num)
        self.mc_batch_size = self._positive("mc_batch_size", mc_batch_size)
        if self.mc_num % self.mc_batch_size:
            raise ValueError(f"jdllm model_args: mc_num ({mc_num}) must be a multiple of mc_batch_size "
                             f"({mc_batch_size}), as in LLaDA's eval")
        self.check_greedy = bool(check_greedy)
        self.seed = int(seed)
        self.recipe = recipe
        self.gen_length = None if gen_length is None else self._positive("gen_length", gen_length)
        self.decode = {k: _none_if_none_text(v) for k, v in decode.items()}
        self.bundle = load_bundle(pretrained, dtype=dtype, check_finite=True, lora=lora)
        self.max_length = None if max_length is None else self._positive("max_length", max_length)
        self._check_decode(self.gen_length or self.bundle.gen_length)
        self.stats: dict[str, float] = {}

    @staticmethod
    def _positive(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
            raise ValueError(f"jdllm model_args: {name} must be a positive integer, got {value!r}")
        return int(value)

    # ------------------------------------------------------------------------------------------- generate
    def decode_kwargs(self, gen_length: int) -> dict[str, Any]:
        """`jdllm.generate` keywords at `gen_length`: the recipe's, with the model_args' decode keywords replacing
        its choice for their axis (`jdllm.recipes.merge_recipe`); without a recipe, LLaDA's defaults (block 32,
        one step per token, low-confidence remasking) under the given keywords."""
        from jdllm.recipes import merge_recipe, recipe_kwargs

        if self.recipe is not None:
            base = recipe_kwargs(self.recipe, gen_length, model_config=self.bundle.model.config)
            return merge_recipe(base, self.decode)
        return {"block_length": min(32, gen_length), "steps": gen_length, **self.decode}

    def _check_decode(self, gen_length: int) -> None:
        from jdllm.validation import check_generate_args

        check_generate_args(gen_length=gen_length, seed=self.seed, **self.decode_kwargs(gen_length))

    def _gen_length(self, gen_kwargs: dict[str, Any]) -> int:
        if self.gen_length is not None:
            return self.gen_length
        if gen_kwargs.get("max_gen_toks") is not None:
            return self._positive("max_gen_toks", gen_kwargs["max_gen_toks"])
        return self.bundle.gen_length

    def _until(self, gen_kwargs: dict[str, Any]) -> list[str]:
        until = gen_kwargs.get("until") or []
        return [until] if isinstance(until, str) else list(until)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            gen_kwargs = dict(req.args[1] or {})
            ignored = sorted(set(gen_kwargs) - set(_GEN_KWARGS_USED))
            if ignored:
                _LOG.warning(f"jdllm generate_until: generation keywords {ignored} are not used (decode keywords "
                             "come from model_args)")
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        answers: list[str | None] = [None] * len(requests)
        for key, idx in groups.items():
            gen_kwargs = json.loads(key)
            texts = self._generate([requests[i].args[0] for i in idx], self._gen_length(gen_kwargs))
            for i, text in zip(idx, texts):
                answers[i] = cut_at_stops(text, self._until(gen_kwargs))
                self.cache_hook.add_partial("generate_until", requests[i].args, answers[i])
        return answers

    def _generate(self, contexts: list[str], gen_length: int) -> list[str]:
        """Answers of `contexts` (raw text, fed as is), batched by prompt length; logs the speed figures."""
        import jdllm

        kw = self.decode_kwargs(gen_length)
        ids = [self.bundle.tokenizer.encode(c) for c in contexts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str | None] = [None] * len(ids)
        tokens = nfe_sum = 0
        seconds, compiled_s, compiled_tokens = 0.0, 0.0, 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            batch = [ids[i] for i in rows] + [ids[rows[-1]]] * (self.batch_size - len(rows))
            t0 = time.perf_counter()
            res = jdllm.generate(self.bundle.model, batch, gen_length=gen_length, seed=self.seed, **kw)
            dt = time.perf_counter() - t0
            n_tok = 0
            for j, i in enumerate(rows):
                out[i] = self.bundle.decode_answer(res.tokens[j])
                n_tok += self._answer_tokens(res.tokens[j])
                nfe_sum += int(res.nfe[j])
            tokens, seconds = tokens + n_tok, seconds + dt
            if start > 0:
                compiled_s, compiled_tokens = compiled_s + dt, compiled_tokens + n_tok
        mean_nfe = nfe_sum / max(len(ids), 1)
        self.stats = {"prompts": len(ids), "gen_length": gen_length, "generated_tokens": tokens, "seconds": seconds,
                      "tokens_per_s": tokens / seconds if seconds else 0.0, "nfe": mean_nfe,
                      "tokens_per_forward": gen_length / mean_nfe if mean_nfe else 0.0,
                      "tokens_per_s_compiled": compiled_tokens / compiled_s if compiled_s else None}
        after = self.stats["tokens_per_s_compiled"]
        _LOG.info(f"jdllm generate_until: {len(ids)} prompts, {tokens} generated tokens in {seconds:.2f}s = "
                  f"{self.stats['tokens_per_s']:.1f} tokens/s"
                  + (f" ({after:.1f} tokens/s after the first, compiling, batch)" if after else "")
                  + f", mean NFE {mean_nfe:.2f}, {self.stats['tokens_per_forward']:.2f} tokens per forward "
                  f"(gen_length {gen_length}, batch {self.batch_size}, recipe {self.recipe})")
        return out

    def _answer_tokens(self, row) -> int:
        stops = self.bundle.stop_ids or self.bundle.model.config.eos_ids
        row = [int(t) for t in row]
        return next((i for i, t in enumerate(row) if t in stops), len(row))

    # ------------------------------------------------------------------------------------------ likelihood
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, trailing spaces of the context moved to the continuation and the
        continuation's ids taken from the whole text's encoding (lm-eval's TemplateLM._encode_pair)."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = self.bundle.tokenizer.encode(context + continuation)
        ctx = self.bundle.tokenizer.encode(context)
        return whole[: len(ctx)], whole[len(ctx):]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(masked ELBO, greedy?) per request; the draws of `batch_size` requests run as one forward."""
        draws = []
        for i, req in enumerate(requests):
            prefix, target = self._encode_pair(*req.args)
            if not target:
                raise ValueError(f"jdllm loglikelihood: request {i} has an empty continuation ({req.args!r})")
            if self.max_length is not None and len(prefix) + len(target) > self.max_length:
                raise ValueError(f"jdllm loglikelihood: request {i} has {len(prefix)} + {len(target)} tokens, more "
                                 f"than max_length {self.max_length}")
            draws.append(self.draws(prefix, target, np.random.default_rng([self.seed, context_key(prefix)])))
        elbos = self.elbos(draws)
        out = []
        for req, d, elbo in zip(requests, draws, elbos):
            result = (elbo, self.greedy_reproduces(d.prefix, d.target))
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def masked_elbo(self, prefix: list[int], target: list[int], rng: np.random.Generator) -> float:
        """LLaDA's Monte-Carlo log-likelihood estimate of `target` after `prefix` (module docstring)."""
        return self.elbos([self.draws(prefix, target, rng)])[0]

    def draws(self, prefix: list[int], target: list[int], rng: np.random.Generator) -> "Draws":
        """The `mc_num` masked copies of prefix + target: per MC batch of `mc_batch_size` rows a random k, the
        evenly spread mask counts `mask_counts(k, T, b)`, and per row that many random continuation positions."""
        b, t_len, p_len = self.mc_batch_size, len(target), len(prefix)
        seq = np.asarray(prefix + target, np.int64)
        is_mask = np.zeros((self.mc_num, len(seq)), bool)
        counts = np.zeros(self.mc_num, np.int64)
        for start in range(0, self.mc_num, b):
            counts[start: start + b] = mask_counts(int(rng.integers(1, t_len + 1)), t_len, b)
            for r in range(start, start + b):
                is_mask[r, p_len + rng.permutation(t_len)[: counts[r]]] = True
        return Draws(list(prefix), list(target), seq, is_mask, t_len / counts)

    def elbos(self, draws: list["Draws"]) -> list[float]:
        """The estimate of each `Draws`: -(1 / mc_num) sum_rows sum_masked -log p / p_mask (= minus the mean over
        MC batches of LLaDA's per-batch loss). Rows of `batch_size` requests of one padded width share a forward."""
        by_width: dict[int, list[int]] = {}
        for i, d in enumerate(draws):
            by_width.setdefault(-(-len(d.seq) // 16) * 16, []).append(i)  # widths in steps of 16: few programs
        totals = np.zeros(len(draws))
        for width, idx in by_width.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start: start + self.batch_size]
                chunk_full = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # one compiled shape
                nll = self._token_nll([draws[i] for i in chunk_full], width)
                for j, i in enumerate(chunk):
                    d = draws[i]
                    rows = nll[j * self.mc_num: (j + 1) * self.mc_num, width - len(d.seq):]
                    totals[i] = float((rows * d.is_mask * d.weight[:, None]).sum())
        return [-t / self.mc_num for t in totals]

    def _token_nll(self, draws: list["Draws"], width: int) -> np.ndarray:
        """-log p(clean token | noisy rows) per position, [len(draws) * mc_num, width], every row left-padded to
        `width`; with cfg_scale > 0, LLaDA's unsupervised classifier-free guidance (the prompt masked out for the
        unconditional logits)."""
        import jax.numpy as jnp

        import jdllm

        cfg = self.bundle.model.config
        cfg_scale = float(self.decode_kwargs(self.bundle.gen_length).get("cfg_scale") or 0.0)
        pad_id = cfg.pad_id if cfg.pad_id is not None else 0
        noisy, uncond, clean, attention = [], [], [], []
        for d in draws:
            pad = width - len(d.seq)
            rows = np.where(d.is_mask, cfg.mask_id, d.seq[None])
            blank = rows.copy()
            blank[:, : len(d.prefix)] = cfg.mask_id
            left = np.full((len(rows), pad), pad_id)
            noisy.append(np.concatenate([left, rows], 1))
            uncond.append(np.concatenate([left, blank], 1))
            clean.append(np.concatenate([left, np.broadcast_to(d.seq, rows.shape)], 1))
            attention.append(np.concatenate([np.zeros((len(rows), pad), bool), np.ones(rows.shape, bool)], 1))
        attention = np.concatenate(attention)
        logits = jdllm.forward(self.bundle.model, np.concatenate(noisy), attention)
        if cfg_scale > 0:
            un = jdllm.forward(self.bundle.model, np.concatenate(uncond), attention)
            logits = un + (cfg_scale + 1) * (logits - un)
        return -np.asarray(_picked_logp(logits, jnp.asarray(np.concatenate(clean), jnp.int32)))

    def greedy_reproduces(self, prefix: list[int], target: list[int]) -> bool:
        """`check_greedy`: whether greedy decoding of len(target) tokens after `prefix`, one token per step
        (the most confident first, LLaDA's `suffix_greedy_prediction`), gives `target`; False when off."""
        if not self.check_greedy:
            return False
        import jdllm

        n = len(target)
        res = jdllm.generate(self.bundle.model, [prefix], gen_length=n, block_length=n, steps=n,
                             remasking="low_confidence", temperature=0.0)
        return [int(t) for t in res.tokens[0]] == list(target)

    def rolling_windows(self, ids: list[int]) -> list[tuple[list[int], list[int]]]:
        """(prefix, target) windows covering `ids` once: at most `max_length` tokens each (default: the model's
        `max_seq_len`); the first window has no prefix, each later one scores the next `max_length // 2` tokens
        after the `max_length // 2`-or-more tokens before them (so every window fits, and every token after the
        first window has at least half a window of left context)."""
        width = self.max_length or self.bundle.model.config.max_seq_len
        step = max(1, width // 2)
        windows, pos = [(list(), list(ids[:width]))], width
        while pos < len(ids):
            target = list(ids[pos: pos + step])
            windows.append((list(ids[max(0, pos + len(target) - width): pos]), target))
            pos += len(target)
        return windows

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text for lm-eval's perplexity tasks, as the sum over `rolling_windows` of
        LLaDA's masked-diffusion ELBO (`masked_elbo`) of each window's target after its prefix. The ELBO is a
        lower bound on log p (arXiv 2502.09992 Eq. 6), estimated with `mc_num` draws, so perplexities computed
        from it are upper bounds (LLaDA's paper reports perplexity the same way); a masked-diffusion model has no
        exact left-to-right likelihood."""
        draws, owner = [], []
        for i, req in enumerate(requests):
            text = req.args[0]
            ids = self.bundle.tokenizer.encode(text)
            if not ids:
                raise ValueError(f"jdllm loglikelihood_rolling: request {i} has no tokens ({text!r})")
            for prefix, target in self.rolling_windows(ids):
                draws.append(self.draws(prefix, target, np.random.default_rng([self.seed, context_key(prefix + target)])))
                owner.append(i)
        totals = np.zeros(len(requests))
        for i, elbo in zip(owner, self.elbos(draws)):
            totals[i] += elbo
        out = [float(t) for t in totals]
        for req, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return out

    # ------------------------------------------------------------------------------------------ chat
    @property
    def tokenizer_name(self) -> str:
        return self.bundle.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return None if self.bundle.chat_template is None else self.bundle.chat_template.source

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.bundle.format_chat(chat_history, add_generation_prompt)


def main(argv: Sequence[str]) -> int:
    """lm-eval's command line (`lm_eval ...` arguments) with the `jdllm` model registered; its exit status."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["jdllm eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0
