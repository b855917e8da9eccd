from jdllm.weights.hf import load_hf, save_hf
from jdllm.weights.orbax_io import load_orbax, save_orbax

__all__ = ["load_hf", "save_hf", "load_orbax", "save_orbax"]
