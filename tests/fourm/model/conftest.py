import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every model test on one torch thread (tests/conftest.py says why)."""
