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


@pytest.fixture
def attention_timings(monkeypatch):
    """Attention's kernel decisions forgotten, and their timing replaced by a record: the list of
    (dtype, backward) cases timed, each deciding for torch's SDPA."""
    from fourm.model import attention

    monkeypatch.setattr(attention, "_KERNEL", {})
    timed = []

    def timing(device, dtype, backward):
        timed.append((dtype, backward))
        return {"sdpa": 0.0}

    monkeypatch.setattr(attention, "_time_kernels", timing)
    return timed


@pytest.fixture
def use_attention_kernel(monkeypatch):
    """-> use(kernel, dtype, with_dropout="sdpa"): attention on a CPU takes ``kernel`` for ``dtype``, in
    training and inference, as if timing had chosen it (``with_dropout`` where dropout rules it out)."""
    from fourm.model import attention

    def use(kernel, dtype, with_dropout=None):
        for backward in (True, False):
            monkeypatch.setitem(attention._KERNEL, ("cpu", dtype, backward), (kernel, with_dropout or kernel))

    return use
