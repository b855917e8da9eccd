"""Block schedules (the schedule axis): which window of the generation region is active for each row."""

from jdllm.decode.schedules.semi_ar import BlockSchedule, SemiAutoregressive

SCHEDULES = {"semi_ar": SemiAutoregressive}

__all__ = ["BlockSchedule", "SemiAutoregressive", "SCHEDULES"]
