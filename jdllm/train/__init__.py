"""Training: masked-diffusion SFT (LLaDA objective) with optax, and a greedy LLaDA sampler for validation.

The shipped default model is retrained with `python scripts/train_shipped_model.py --fresh`.
"""

from jdllm.train.diffusion import (
    SFTData,
    TrainConfig,
    TrainResult,
    diffusion_loss,
    encode_prompts,
    encode_sft,
    evaluate,
    export_llada,
    make_greedy_sampler,
    problems_to_sft,
    train,
)

__all__ = [
    "SFTData",
    "TrainConfig",
    "TrainResult",
    "diffusion_loss",
    "encode_prompts",
    "encode_sft",
    "evaluate",
    "export_llada",
    "make_greedy_sampler",
    "problems_to_sft",
    "train",
]
