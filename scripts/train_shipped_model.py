"""Retrain the shipped default model: same as `jdllm train` (see jdllm/train/shipped.py)."""

from jdllm.train.shipped import main

if __name__ == "__main__":
    main()
