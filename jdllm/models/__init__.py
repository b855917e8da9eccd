from jdllm.models.config import ModelConfig, config_from_dream, config_from_hf, config_from_llada
from jdllm.models.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "config_from_hf", "config_from_llada", "config_from_dream"]
