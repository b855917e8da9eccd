"""Prompt-length buckets: the canvas width a call is compiled for.

`generate` compiles one program per canvas shape. Called prompt by prompt (scripts, notebooks, a server), exact
prompt widths would compile a new program for every new length; instead the prompts of a call are left-padded to
the next width of a small fixed ladder, so a stream of prompts of many lengths compiles a handful of programs.
Left padding is batch-invariant (rotary positions are `cumsum(mask) - 1`, padded keys are masked), so the tokens
are those of the exact width.

The default ladder: multiples of 64 up to 512, then powers of two (1024, 2048, ...). Padding costs compute
(at most 63 extra positions below 512 and under 2x above); `prompt_length=` fixes an exact width and
`prompt_buckets=None` turns bucketing off.
"""

from __future__ import annotations

from typing import Sequence

DEFAULT_PROMPT_BUCKETS: tuple[int, ...] = tuple(range(64, 513, 64))


def bucket_width(longest: int, buckets: Sequence[int] | None = DEFAULT_PROMPT_BUCKETS,
                 max_width: int | None = None) -> int:
    """The prompt width to compile for: the smallest bucket >= `longest`, or beyond the ladder the next power
    of two; never more than `max_width` (the room the model's maximum length leaves), never less than `longest`.
    `buckets=None` or empty: `longest` itself."""
    if longest < 1:
        raise ValueError(f"the longest prompt must have >= 1 token, got {longest}")
    if not buckets:
        width = longest
    else:
        ladder = sorted(int(b) for b in buckets)
        if ladder[0] < 1:
            raise ValueError(f"prompt buckets must be positive, got {ladder}")
        width = next((b for b in ladder if b >= longest), None)
        if width is None:
            width = 1 << (longest - 1).bit_length()
    if max_width is not None:
        width = min(width, max_width)
    return max(width, longest)
