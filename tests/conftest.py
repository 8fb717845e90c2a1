"""Shared test set-up. Kept free of torch so environments without it (the pose env) can run tests."""

import os

import pytest

# hub look-ups otherwise retry for ~25 s before failing; every model a test uses is built locally
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """Tiny models: a second torch thread only adds synchronisation, and on a shared machine an
    oversubscribed OpenMP barrier made such tests 3-10x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here, not at the top: the pose environment runs these tests without torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
