"""Commit policies (the policy axis) and their registry: one file per paper, one entry here."""

from jdllm.decode.policies.base import CommitPolicy, StepContext
from jdllm.decode.policies.factor import Factor
from jdllm.decode.policies.threshold import Threshold
from jdllm.decode.policies.topk import TopK

POLICIES: dict[str, type[CommitPolicy]] = {
    "topk": TopK,
    "threshold": Threshold,
    "factor": Factor,
}

__all__ = ["CommitPolicy", "StepContext", "TopK", "Threshold", "Factor", "POLICIES"]
