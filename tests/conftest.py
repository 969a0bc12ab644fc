"""Shared fixtures: small synthetic data made by code, and the optional ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A small synthetic data directory (300 users, 200 items), made once per session."""
    from gensr.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare("synthetic", None, out, options={"n_users": 300, "n_items": 200, "seed": 7})
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir):
    from gensr.data import load_data

    return load_data(tiny_data_dir)


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """The full embedded synthetic dataset (2,000 users), made once per session."""
    from gensr.data.prepare import prepare

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare("synthetic", None, out)
    return out


@pytest.fixture(scope="session")
def tiny_cf_path(tiny_data, tmp_path_factory) -> Path:
    """A LightGCN item table for the tiny data (16 dims, up to 30 epochs: a few seconds)."""
    from gensr.cf import pretrain_cf

    out = tmp_path_factory.mktemp("cf") / "cf.safetensors"
    pretrain_cf(tiny_data, out, epochs=30, min_epochs=1, dim=16, progress=False)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread (and shared CPUs do not oversubscribe); use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
