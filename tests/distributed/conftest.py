"""Fixtures of the tensor-parallel tests (helpers are in tp_harness.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread_each():
    """One torch thread in this process: tiny matrices gain nothing from more, and the ranks share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
