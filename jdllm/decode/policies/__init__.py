"""Commit policies (the policy axis) and their registry: one file per paper, one entry here."""

from jdllm.decode.policies.base import CommitPolicy, StepContext
from jdllm.decode.policies.dream import DreamAlgorithm
from jdllm.decode.policies.eb import EntropyBounded
from jdllm.decode.policies.factor import Factor
from jdllm.decode.policies.frechet import Frechet
from jdllm.decode.policies.klass import KLASS
from jdllm.decode.policies.local_leap import LocalLeap
from jdllm.decode.policies.prophet import Prophet
from jdllm.decode.policies.r2 import R2
from jdllm.decode.policies.temporal_spatial import TemporalSpatial
from jdllm.decode.policies.threshold import Threshold
from jdllm.decode.policies.topk import TopK

POLICIES: dict[str, type[CommitPolicy]] = {
    "topk": TopK,
    "threshold": Threshold,
    "factor": Factor,
    "frechet": Frechet,
    "r2": R2,
    "temporal_spatial": TemporalSpatial,
    "dream": DreamAlgorithm,
    "eb": EntropyBounded,
    "prophet": Prophet,
    "klass": KLASS,
    "local_leap": LocalLeap,
}

__all__ = [
    "CommitPolicy", "StepContext", "TopK", "Threshold", "Factor", "Frechet", "R2", "TemporalSpatial",
    "DreamAlgorithm", "EntropyBounded", "Prophet", "KLASS", "LocalLeap", "POLICIES",
]
