"""jdllm: fast diffusion-LLM inference in JAX.

    import jdllm
    model = jdllm.load("path/to/checkpoint")            # HF dir or a dir written by jdllm.save
    out = jdllm.generate(model, prompts, gen_length=256, block_length=32, steps=256)
    out.tokens, out.nfe
"""

from jdllm.api import GenerateOutput, forward, generate, load, save
from jdllm.models.config import ModelConfig
from jdllm.models.transformer import Transformer

__version__ = "0.1.0"

__all__ = ["load", "save", "forward", "generate", "GenerateOutput", "ModelConfig", "Transformer"]
