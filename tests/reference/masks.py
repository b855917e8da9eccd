"""D2F's block-causal attention mask, transcribed into numpy from `create_full_block_attention_mask` in
zhijie-group/Discrete-Diffusion-Forcing (eval / train scripts; arXiv 2508.09192 §3.1), independently of jdllm.

The prompt (first `prompt_length` rows) is block 0: it attends to itself only. The rest is cut into blocks of
`block_size` from the prompt end (the last may be partial); each attends to the prompt, to every earlier block and
to itself. The result is an additive bias [1, 1, L, L]: 0 where attention is allowed, -inf elsewhere.
"""

from __future__ import annotations

import numpy as np


def create_full_block_attention_mask(prompt_length: int, max_length: int, block_size: int) -> np.ndarray:
    attention_mask = np.full((1, 1, max_length, max_length), -np.inf)
    attention_mask[:, :, :prompt_length, :prompt_length] = 0
    remaining_length = max_length - prompt_length
    num_blocks = (remaining_length + block_size - 1) // block_size
    for b in range(num_blocks):
        block_start = prompt_length + b * block_size
        block_end = min(prompt_length + (b + 1) * block_size, max_length)
        attention_mask[:, :, block_start:block_end, :prompt_length] = 0
        for prev_b in range(b):
            prev_start = prompt_length + prev_b * block_size
            prev_end = min(prompt_length + (prev_b + 1) * block_size, max_length)
            attention_mask[:, :, block_start:block_end, prev_start:prev_end] = 0
        attention_mask[:, :, block_start:block_end, block_start:block_end] = 0
    return attention_mask
