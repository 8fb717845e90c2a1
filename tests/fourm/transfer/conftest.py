"""A nano FourM with tiny random tokenizers (the generation tests') and a small raw scenes corpus."""

import pytest

from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

from ..generation.conftest import model_dir, nano_model, tokenizers_dir  # noqa: F401 (fixtures, re-used)

SIDE = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every transfer test on one torch thread (tests/conftest.py says why)."""


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """24 built-in scenes at 32 px, only the source's exact series (no labeller runs)."""
    out = tmp_path_factory.mktemp("scenes")
    run_pipeline(PseudolabelConfig(source="scenes:24", out=str(out), labellers=[], image_size=SIDE, shard_size=12),
                 progress=False)
    return out
