"""LLaDA-8B-shaped decode speed on an accelerator, with random bf16 weights (nothing downloaded).

Builds a model with LLaDA-8B-Instruct's shapes (d_model 4096, 32 layers, 32 heads, MLP 12288, vocab 126464)
directly on the device(s): every parameter is drawn by a jitted random op straight into its sharding
(tensor-parallel over all devices when there are several; nothing is materialised on the host). Then, for
batch 1 and 8, block 32, gen_length 256, a 128-token random prompt, it times the recipes

- `vanilla`: LLaDA's reference (top-k low confidence, steps = gen_length, no cache);
- `fast_dllm_parallel`: Fast-dLLM threshold 0.9, no cache;
- `fast_dllm_dual_parallel`: threshold 0.9 + dual KV cache;

reporting compile time apart from decode time, per-step (per loop iteration) time, generated tokens/s, NFE,
and the HBM floor of one forward: weight bytes per device / measured device copy bandwidth (every forward
reads all weights once). When `torch` is importable (single device) the same algorithms, written in plain
PyTorch after the reference implementations (LLaDA `generate`, Fast-dLLM `generate` / dual cache, batched
as they are, full-canvas logits included), run on the same weights (shared through DLPack) for comparison.

Random weights make the model unconfident: at the default `--head-scale 1` the 0.9 threshold rarely fires,
so the threshold recipes commit about one token per step and their NFE is close to vanilla's; the per-step
times are still the real ones. A larger `--head-scale` sharpens the LM head (more parallel commits).

    python benchmarks/gpu_llada8b.py                    # on a GPU / TPU host
    python benchmarks/gpu_llada8b.py --small            # tiny model, gen 64, block 16: CPU, about a minute

Writes JSON to benchmarks/results/ (machine, versions, date and every number).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

import jdllm
from jdllm import sharding as S
from jdllm.bench import machine_info
from jdllm.models import ModelConfig
from jdllm.recipes import recipe_kwargs
from jdllm.weights.hf import abstract_model

RECIPES = ["vanilla", "fast_dllm_parallel", "fast_dllm_dual_parallel"]

LLADA_8B = dict(family="llada", vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                mlp_hidden_size=12288, max_seq_len=4096, mask_id=126336, eos_id=126081, pad_id=126081,
                rope_theta=500000.0, dtype="bfloat16")
SMALL = dict(LLADA_8B, vocab_size=512, d_model=64, n_layers=2, n_heads=8, n_kv_heads=8, mlp_hidden_size=192,
             max_seq_len=512, mask_id=511, eos_id=510, pad_id=510)


# ----------------------------------------------------------------------------------------------------------
# model on device


def _std(key: tuple, shape, cfg: ModelConfig, head_scale: float) -> float | None:
    """None = ones (norm weights); else the normal's std (the Linear init; embeddings 0.02)."""
    if key[-1] == "weight":
        return None
    if key == ("wte",):
        return 0.02
    std = shape[0] ** -0.5
    return std * head_scale if key == ("ff_out", "kernel") else std


def build_model(cfg: ModelConfig, mesh, rules, seed: int, head_scale: float):
    """Random-weight model whose every parameter is created on its device(s) by a jitted random op."""
    graphdef, abstract = abstract_model(cfg)
    dtype = cfg.jnp_dtype

    @functools.lru_cache(maxsize=None)
    def maker(shape, std, sharding):
        if std is None:
            return jax.jit(lambda k: jnp.ones(shape, dtype), out_shardings=sharding)
        return jax.jit(lambda k: (jax.random.normal(k, shape, jnp.float32) * std).astype(dtype), out_shardings=sharding)

    base = jax.random.key(seed)
    counter = iter(range(1 << 20))

    def init(path, leaf):
        key = S.normalize_path(path)
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = S.param_sharding(key, leaf.shape, mesh, rules)
        return maker(tuple(leaf.shape), _std(key, leaf.shape, cfg, head_scale), sharding)(
            jax.random.fold_in(base, next(counter)))

    state = jax.tree_util.tree_map_with_path(init, abstract)
    model = nnx.merge(graphdef, state)
    if mesh is not None:
        model.sharding_rules = rules
    return model


def param_bytes(model) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def copy_bandwidth(n_bytes: int, repeats: int = 10) -> float:
    """Device memory bandwidth in bytes/s of one device, from a jitted elementwise op (read + write n_bytes)."""
    dev = jax.devices()[0]
    x = jax.device_put(jnp.ones((n_bytes // 2,), jnp.bfloat16), dev)
    f = jax.jit(lambda a: a * 2)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * x.nbytes / float(np.median(times))


# ----------------------------------------------------------------------------------------------------------
# jdllm timing


def time_jdllm(model, prompts: np.ndarray, recipe: str, gen: int, block: int, repeats: int) -> dict:
    kw = recipe_kwargs(recipe, gen)
    kw["block_length"] = block
    call = lambda: jdllm.generate(model, prompts, gen_length=gen, **kw)  # noqa: E731
    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    decode_s = float(np.median(times))
    b = prompts.shape[0]
    return {
        "recipe": recipe, "decode_kwargs": {k: v for k, v in kw.items() if k != "policy"}, "batch": b,
        "decode_s": decode_s, "decode_s_all": times, "compile_s": max(first - decode_s, 0.0),
        "iterations": out.iterations, "step_s": decode_s / out.iterations,
        "nfe_mean": float(np.mean(out.nfe)), "nfe_max": int(np.max(out.nfe)),
        "tokens_per_s": b * gen / decode_s, "tokens_per_s_per_row": gen / decode_s,
    }


# ----------------------------------------------------------------------------------------------------------
# PyTorch reference (LLaDA generate / Fast-dLLM generate and dual cache, batched as the originals)


def torch_reference(model, cfg: ModelConfig, prompts: np.ndarray, recipe: str, gen: int, block: int, repeats: int):
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def to_torch(x):
        try:
            return torch.from_dlpack(x).to(dev)
        except Exception:  # noqa: BLE001  (a backend without DLPack interop: copy through the host)
            return torch.from_numpy(np.asarray(x.astype(jnp.float32))).to(dev).to(torch.bfloat16)

    p = {S.normalize_path(k): to_torch(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    layers = [{n: p[("blocks", i, n, "kernel" if n not in ("attn_norm", "ff_norm") else "weight")]
               for n in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out")}
              for i in range(cfg.n_layers)]
    h, hd, eps = cfg.n_heads, cfg.head_dim, cfg.rms_norm_eps
    inv_freq = cfg.rope_theta ** (-torch.arange(0, hd, 2, device=dev, dtype=torch.float32) / hd)

    def rms(x, w):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

    def rope(t, pos):  # t [B, H, Q, D], pos [Q]
        ang = pos.float()[:, None] * inv_freq[None]
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]
        t32 = t.float()
        t1, t2 = t32[..., : hd // 2], t32[..., hd // 2:]
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1).to(t.dtype)

    def forward(x, q0=0, q1=None, cache=None):
        """Logits [B, q1-q0, V] (float32) of the query rows; K/V of every layer (full length when no cache,
        else the cache with rows [q0, q1) replaced by fresh ones)."""
        b, length = x.shape
        q1 = length if q1 is None else q1
        pos = torch.arange(q0, q1, device=dev)
        hs = p[("wte",)][x[:, q0:q1]]
        kvs = []
        for i, lw in enumerate(layers):
            a = rms(hs, lw["attn_norm"])
            q = rope((a @ lw["q_proj"]).view(b, -1, h, hd).transpose(1, 2), pos)
            k = rope((a @ lw["k_proj"]).view(b, -1, cfg.n_kv_heads, hd).transpose(1, 2), pos)
            v = (a @ lw["v_proj"]).view(b, -1, cfg.n_kv_heads, hd).transpose(1, 2)
            if cache is not None:
                ck, cv = cache[i]
                k = torch.cat([ck[:, :, :q0], k, ck[:, :, q1:]], 2)
                v = torch.cat([cv[:, :, :q0], v, cv[:, :, q1:]], 2)
            kvs.append((k, v))
            o = F.scaled_dot_product_attention(q, k, v, **({"enable_gqa": True} if cfg.n_kv_heads != h else {}))
            hs = hs + o.transpose(1, 2).reshape(b, -1, h * hd) @ lw["attn_out"]
            a = rms(hs, lw["ff_norm"])
            hs = hs + (F.silu(a @ lw["ff_proj"]) * (a @ lw["up_proj"])) @ lw["ff_out"]
        return (rms(hs, p[("ln_f", "weight")]) @ p[("ff_out", "kernel")]).float(), kvs

    def commit(x, s, logits, quota=None, threshold=None):
        """One step on block [s, s + W) of every row: argmax proposals, softmax confidence, commit top-quota
        (LLaDA) or all >= threshold with at least the most confident one (Fast-dLLM)."""
        blk = x[:, s:s + logits.shape[1]]
        masked = blk == cfg.mask_id
        x0 = logits.index_fill(-1, torch.tensor([cfg.mask_id], device=dev), -torch.inf).argmax(-1)
        conf = torch.softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
        conf = torch.where(masked, conf, -torch.inf)
        if threshold is None:
            k = int(quota)
            top = torch.topk(conf, k, dim=-1).indices
            sel = torch.zeros_like(masked).scatter_(1, top, True) & masked
        else:
            best = torch.zeros_like(masked).scatter_(1, conf.argmax(-1, keepdim=True), True)
            sel = masked & ((conf >= threshold) | best)
        x[:, s:s + logits.shape[1]] = torch.where(sel, x0, blk)

    def run():
        x = torch.full((prompts.shape[0], prompts.shape[1] + gen), cfg.mask_id, dtype=torch.long, device=dev)
        x[:, : prompts.shape[1]] = torch.as_tensor(prompts, device=dev)
        lp, nfe = prompts.shape[1], 0
        steps_per_block = gen // (gen // block)  # steps = gen_length
        for s in range(lp, lp + gen, block):
            e = s + block
            if recipe == "vanilla":
                base, extra = divmod(block, steps_per_block)
                for i in range(steps_per_block):
                    logits, _ = forward(x)
                    nfe += 1
                    commit(x, s, logits[:, s:e], quota=base + (i < extra))
            elif recipe == "fast_dllm_parallel":
                while (x[:, s:e] == cfg.mask_id).any():
                    logits, _ = forward(x)
                    nfe += 1
                    commit(x, s, logits[:, s:e], threshold=0.9)
            else:  # dual cache: full forward at the block start, then block-only queries over the cache
                logits, cache = forward(x)
                nfe += 1
                commit(x, s, logits[:, s:e], threshold=0.9)
                while (x[:, s:e] == cfg.mask_id).any():
                    logits, _ = forward(x, s, e, cache)
                    nfe += 1
                    commit(x, s, logits, threshold=0.9)
        return x, nfe

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        t0 = time.perf_counter()
        run()
        sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x, nfe = run()
            sync()
            times.append(time.perf_counter() - t0)
    decode_s = float(np.median(times))
    b = prompts.shape[0]
    return {"recipe": recipe, "batch": b, "device": str(dev), "torch": torch.__version__, "decode_s": decode_s,
            "warmup_s": first, "nfe": nfe, "step_s": decode_s / nfe, "tokens_per_s": b * gen / decode_s}


# ----------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU, about a minute)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--gen", type=int, default=None, help="gen_length (default 256; 64 with --small)")
    ap.add_argument("--block", type=int, default=None, help="block_length (default 32; 16 with --small)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 128; 16 with --small)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after the compiling one (default 2; 1 with --small)")
    ap.add_argument("--head-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for name, full, small in (("gen", 256, 64), ("block", 32, 16), ("prompt_len", 128, 16), ("repeats", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.small else full)

    cfg = ModelConfig(**(SMALL if args.small else LLADA_8B))
    n_dev = jax.device_count()
    mesh = S.make_mesh(tensor=n_dev) if n_dev > 1 else None
    rules = S.TENSOR_PARALLEL
    t0 = time.perf_counter()
    model = build_model(cfg, mesh, rules, args.seed, args.head_scale)
    jax.block_until_ready(nnx.state(model))
    build_s = time.perf_counter() - t0
    wbytes = param_bytes(model)
    bw = copy_bandwidth((64 << 20) if args.small else (2 << 30))
    floor_step = wbytes / n_dev / bw
    info = machine_info()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    print(f"{info['device']} x{n_dev}: {wbytes / 2**20:.1f} MiB of weights ({n_params / 1e6:.1f} M params), "
          f"built in {build_s:.1f}s; copy bandwidth {bw / 1e9:.0f} GB/s -> HBM floor {1e3 * floor_step:.2f} ms/forward", flush=True)

    torch_ok = not args.no_torch and n_dev == 1
    if torch_ok:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_ok = False
    rng = np.random.default_rng(args.seed)
    rows = []
    for b in args.batches:
        prompts = rng.integers(0, min(cfg.vocab_size, cfg.mask_id) - 2, size=(b, args.prompt_len)).astype(np.int32)
        for recipe in args.recipes:
            r = time_jdllm(model, prompts, recipe, args.gen, args.block, args.repeats)
            r["floor_step_s"] = floor_step
            r["step_vs_floor"] = r["step_s"] / floor_step
            if torch_ok:
                try:
                    r["torch"] = torch_reference(model, cfg, prompts, recipe, args.gen, args.block, args.repeats)
                    r["speedup_vs_torch"] = r["tokens_per_s"] / r["torch"]["tokens_per_s"]
                except Exception as e:  # noqa: BLE001  (record, do not lose the JAX numbers)
                    r["torch"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            rows.append(r)
            t = r.get("torch", {})
            vs = f"  torch {t['tokens_per_s']:8.1f} tok/s ({r['speedup_vs_torch']:.2f}x)" if "tokens_per_s" in t else ""
            print(f"B={b:2d} {recipe:26s} compile {r['compile_s']:6.1f}s  decode {r['decode_s']:7.2f}s  "
                  f"step {1e3 * r['step_s']:7.2f} ms ({r['step_vs_floor']:.2f}x floor)  NFE {r['nfe_mean']:6.1f}  "
                  f"{r['tokens_per_s']:8.1f} tok/s{vs}", flush=True)

    report = {
        "benchmark": "gpu_llada8b" + ("_small" if args.small else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "model": {**{k: getattr(cfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                                  "mlp_hidden_size", "dtype")},
                  "weights": f"random (seed {args.seed}, head scale {args.head_scale})", "weight_bytes": wbytes,
                  "build_s": build_s},
        "mesh": None if mesh is None else dict(mesh.shape), "rules": rules.name if mesh is not None else None,
        "setup": {"prompt_len": args.prompt_len, "gen_length": args.gen, "block_length": args.block,
                  "repeats": args.repeats},
        "copy_bandwidth_bytes_per_s": bw, "floor_step_s": floor_step,
        "torch": "ran" if torch_ok else ("not importable" if n_dev == 1 and not args.no_torch else "skipped"),
        "rows": rows,
    }
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"{report['benchmark']}_{info['platform']}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
