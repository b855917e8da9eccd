"""Block schedules (the schedule axis): which window of the generation region each row works on, and when it is
done (see `jdllm.decode.schedules.base`)."""

from jdllm.decode.schedules.base import ABSENT, FULL, SEMI, BlockSchedule, Window
from jdllm.decode.schedules.pipelined import Pipelined
from jdllm.decode.schedules.semi_ar import SemiAutoregressive

SCHEDULES = {"semi_ar": SemiAutoregressive, "pipelined": Pipelined}

__all__ = ["ABSENT", "FULL", "SEMI", "BlockSchedule", "Pipelined", "SemiAutoregressive", "Window", "SCHEDULES"]
