"""Attention kernels behind `Block.attend`: one computation, several implementations.

softmax(q k^T / sqrt(Dh) + mask) v with grouped K/V heads (query head h reads K/V head h // (H / Hkv)); a key is
masked when it is padding (`key_valid`) or, for D2F's block-causal attention, not `allowed` for that query.

- "xla": `jax.nn.dot_product_attention(implementation="xla")`, scores and softmax in float32. The reference:
  every parity test in the repository runs it, and it is what "auto" picks on CPU and GPU.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused cuDNN (flash) kernel of NVIDIA
  GPUs, bfloat16 / float16 only. Opt-in: no session of this project has had a GPU to check its tokens against
  "xla" yet, so "auto" does not choose it (JAX's own `implementation=None` also means XLA today).
- "splash": the Pallas splash-attention kernel of TPUs (`jax.experimental.pallas.ops.tpu.splash_attention`).
  Grouped K/V heads go in as they are (the kernel maps query head h to K/V head h // group); left padding
  becomes segment ids (valid keys segment 0, padding keys segment 1, every query segment 0); query and key
  lengths are padded up to the kernel's 128-row tiles; queries are pre-scaled (the kernel does not scale).
  Bidirectional attention only: block-causal masks are per-row data here while splash masks are static, so those
  calls use "xla". "auto" picks it on a single TPU device for heads whose width is a multiple of 128 (LLaDA-8B's
  and Dream-7B's 128, the kernel's lane width); smaller heads, and multi-device TPU meshes (GSPMD does not
  partition a Pallas call), stay on "xla". Off TPU it runs in Pallas' interpreter (slow; what the tests use to
  check it against numpy and against "xla").

The kernel is a static field of `ModelConfig` (`attention_kernel`), chosen at load (`jdllm.load(...,
attention_kernel=)`) or later (`jdllm.with_attention_kernel(model, kernel)`); it is a runtime choice, never
written into a checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

KERNELS = ("auto", "xla", "cudnn", "splash")
SPLASH_TILE = 128


def resolve_kernel(kernel: str, block_causal: bool, head_dim: int = 128) -> str:
    """The implementation a call runs: `kernel`, with "auto" and the cases a kernel cannot serve resolved."""
    if kernel not in KERNELS:
        raise ValueError(f"attention_kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "auto":
        single_tpu = jax.default_backend() == "tpu" and jax.device_count() == 1
        kernel = "splash" if single_tpu and head_dim % SPLASH_TILE == 0 else "xla"
    if kernel == "splash" and block_causal:
        return "xla"
    return kernel


def attention(
    q: Float[Array, "B Q H Dh"],
    k: Float[Array, "B T Hkv Dh"],
    v: Float[Array, "B T Hkv Dh"],
    key_valid: Bool[Array, "B T"],
    allowed: Bool[Array, "B Q T"] | None = None,
    kernel: str = "xla",
) -> Float[Array, "B Q H Dh"]:
    """Scaled dot-product attention through `kernel` (module docstring); invalid (padding) keys get no weight, nor
    (when `allowed` is given, e.g. `masks.block_causal_allowed`) keys a query may not see."""
    impl = resolve_kernel(kernel, allowed is not None, q.shape[-1])
    if impl == "splash":
        return splash_attention(q, k, v, key_valid, interpret=jax.default_backend() != "tpu")
    mask = key_valid[:, None, None, :]
    if allowed is not None:
        mask = mask & allowed[:, None, :, :]  # [B, 1, Q, T]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def _round_up(n: int, tile: int) -> int:
    return -(-n // tile) * tile


def splash_attention(
    q: Float[Array, "B Q H Dh"],
    k: Float[Array, "B T Hkv Dh"],
    v: Float[Array, "B T Hkv Dh"],
    key_valid: Bool[Array, "B T"],
    interpret: bool = False,
) -> Float[Array, "B Q H Dh"]:
    """Bidirectional attention with padding keys masked, through Pallas splash attention (one kernel call per row,
    vmapped). `interpret=True` runs the kernel in Pallas' interpreter (any backend; slow, for tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, q_len, heads, head_dim = q.shape
    t_len = k.shape[1]
    q_pad, t_pad = _round_up(q_len, SPLASH_TILE), _round_up(t_len, SPLASH_TILE)

    def heads_first(x, length):  # [B, L, H, Dh] -> [B, H, L_padded, Dh]
        x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))
        return jnp.transpose(x, (0, 2, 1, 3))

    scaled = (q.astype(jnp.float32) * head_dim**-0.5).astype(q.dtype)
    qs = heads_first(scaled, q_pad)
    ks, vs = heads_first(k, t_pad), heads_first(v, t_pad)  # the kernel maps query head h to K/V head h // group
    kv_segment = jnp.pad(jnp.where(key_valid, 0, 1), ((0, 0), (0, t_pad - t_len)), constant_values=1)
    segments = splash.SegmentIds(q=jnp.zeros((batch, q_pad), jnp.int32), kv=kv_segment.astype(jnp.int32))
    mask = splash.MultiHeadMask([splash.FullMask((q_pad, t_pad)) for _ in range(heads)])
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    out = jax.vmap(kernel)(qs, ks, vs, segment_ids=segments)  # [B, H, Q_padded, Dh]
    return jnp.transpose(out, (0, 2, 1, 3))[:, :q_len].astype(q.dtype)
