"""Shared fixtures: tiny HF-layout checkpoints (session scoped) and loaded jdllm models.

Checkpoint fixtures yield ``(path, weights, hf_config)``:
- ``llada_ckpt``: LLaDA, MHA (4 heads, 4 K/V heads), one ``model.safetensors``.
- ``llada_gqa_ckpt``: LLaDA, GQA (4 heads, 2 K/V heads), sharded over 3 files + ``model.safetensors.index.json``.
- ``dream_ckpt``: Dream, GQA (4 heads, 2 K/V heads), q/k/v biases, one file.
- ``dream_mha_ckpt``: Dream, MHA (4 K/V heads), sharded over 2 files.
"""

from __future__ import annotations

import os

import pytest

from tests.reference.checkpoints import build_dream_checkpoint, build_llada_checkpoint
from tests.reference.model import RefModel


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: extra compile-heavy cases; run with --runslow or JDLLM_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("JDLLM_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or JDLLM_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llada_ckpt(tmp_path_factory):
    return build_llada_checkpoint(tmp_path_factory.mktemp("llada"), seed=0)


@pytest.fixture(scope="session")
def llada_gqa_ckpt(tmp_path_factory):
    return build_llada_checkpoint(tmp_path_factory.mktemp("llada_gqa"), seed=1, n_kv_heads=2, shards=3)


@pytest.fixture(scope="session")
def dream_ckpt(tmp_path_factory):
    return build_dream_checkpoint(tmp_path_factory.mktemp("dream"), seed=0)


@pytest.fixture(scope="session")
def dream_mha_ckpt(tmp_path_factory):
    return build_dream_checkpoint(tmp_path_factory.mktemp("dream_mha"), seed=1, n_kv_heads=4, shards=2)


@pytest.fixture(scope="session")
def ckpts(llada_ckpt, dream_ckpt):
    """family -> (path, weights, hf_config) of the checkpoints the sampler tests decode with."""
    return {"llada": llada_ckpt, "dream": dream_ckpt}


@pytest.fixture(scope="session")
def ref_models(ckpts):
    """family -> RefModel (numpy float64 reference)."""
    return {fam: RefModel(w, hf) for fam, (_, w, hf) in ckpts.items()}


@pytest.fixture(scope="session")
def jd_models(ckpts):
    """family -> jdllm model loaded from the checkpoint directory (one load per session)."""
    import jdllm

    return {fam: jdllm.load(str(path)) for fam, (path, _, _) in ckpts.items()}
