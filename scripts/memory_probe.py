"""Compare `jdllm.decode.memory.estimate_bytes` with XLA's accounting of the compiled decode program.

    PYTHONPATH=. python scripts/memory_probe.py [--big]

For each shape it compiles (never runs) the decode program of the shipped model and prints XLA's output + temp
bytes (`compiled.memory_analysis()`) next to the estimate; `--big` adds the issue's batch 256 x 1049 positions
(estimate only: compiling that shape is cheap, running it is not).
"""

import sys

import jax
import jax.numpy as jnp
from flax import nnx

import jdllm
from jdllm.decode.caches import DualCache, NoCache, PrefixCache
from jdllm.decode.loop import DecodeSpec, decode
from jdllm.decode.memory import estimate_bytes
from jdllm.decode.policies import Threshold
from jdllm.decode.schedules import SemiAutoregressive
from jdllm.shipped import default_model_dir

SHAPES = [(8, 32, 256, None), (32, 32, 256, None), (8, 32, 1024, None), (8, 32, 256, "dual"), (8, 32, 256, "prefix")]
CACHES = {None: NoCache(), "dual": DualCache(), "prefix": PrefixCache()}


def main(big: bool) -> None:
    model = jdllm.load(default_model_dir())
    graphdef, params = nnx.split(model)
    print(f"{'batch':>5s} {'prompt':>6s} {'gen':>5s} {'cache':>6s} {'measured MB':>12s} {'estimate MB':>12s}")
    for batch, prompt, gen, cache in SHAPES + ([(256, 25, 1024, None)] if big else []):
        length = prompt + gen
        spec = DecodeSpec(policy=Threshold(0.9), cache=CACHES[cache], schedule=SemiAutoregressive(gen, 32),
                          max_iters=4 * gen)
        est = estimate_bytes(model.config, spec, batch, length)
        shapes = (jax.ShapeDtypeStruct((batch, length), jnp.int32), jax.ShapeDtypeStruct((batch, length), bool),
                  jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((), jnp.uint32))
        mem = decode.lower(graphdef, params, spec, *shapes, prompt).compile().memory_analysis()
        measured = mem.output_size_in_bytes + mem.temp_size_in_bytes
        print(f"{batch:5d} {prompt:6d} {gen:5d} {str(cache):>6s} {measured / 1e6:12.1f} {est / 1e6:12.1f}", flush=True)


if __name__ == "__main__":
    main("--big" in sys.argv)
