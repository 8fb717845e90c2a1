"""The public reference's figures (apple/ml-4m, timed by its set-up's ``bench_ml4m.py``), for the ratios
``train_step.py`` and ``generate.py`` print beside ours.

A reference is either a saved stdout of ``bench_ml4m.py`` or the folder that holds it (``bench_ml4m.py``,
``ml-4m/``, ``venv/``), which is then run with the same thread count. Only its own printed lines are read:
``TRAIN step ... min/median ms: total MIN/MEDIAN`` and the ``GEN`` lines (the fastest of its runs).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_TRAIN = re.compile(r"^TRAIN step .*min/median ms: total (\d+)/(\d+)", re.M)
_IMAGE = re.compile(r"^GEN caption->tok_rgb\S* \(196 tok\) (\w+) (\d+) steps \(\w+\) cfg=([\d.]+) batch=(\d+): "
                    r"min (\d+) ms", re.M)
_CAPTION = re.compile(r"^GEN tok_rgb->caption autoregressive, (\d+) new tokens.*: (\d+) ms \(", re.M)


def run_reference(folder: str | os.PathLike, threads: int, train_steps: int = 3, generation: bool = False) -> str:
    """Run ``folder/bench_ml4m.py`` (its own venv, one training step of warm-up) -> its stdout."""
    folder = Path(folder)
    args = ["--threads", str(threads), "--train_steps", str(train_steps), "--overfit_steps", "0"]
    if not generation:
        args.append("--skip_gen")
    env = {**os.environ, "PYTHONPATH": f"{folder / 'ml-4m'}{os.pathsep}{folder}", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([str(folder / "venv/bin/python"), "bench_ml4m.py", *args], cwd=folder, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout


def reference_output(source: str | os.PathLike, threads: int, train_steps: int = 3, generation: bool = False) -> str:
    """A saved stdout as it is, or a reference folder's run."""
    source = Path(source)
    if source.is_dir():
        return run_reference(source, threads, train_steps, generation)
    return source.read_text()


def train_ms(text: str) -> list[float]:
    """The median ms per training step of every TRAIN line in ``text``."""
    found = [float(m.group(2)) for m in _TRAIN.finditer(text)]
    if not found:
        raise ValueError("no 'TRAIN step ... min/median ms: total MIN/MEDIAN' line in the reference's output")
    return found


def generation_ms(text: str) -> dict[str, float]:
    """The fastest run of each generation case, keyed as ``generate.py`` names its cases: ``maskgit 8 steps,
    b1``, ``maskgit 8 steps, b1, guidance 3``, ``roar 8 steps, b1``, ``ar caption 32`` (whole ms, not per token)."""
    out = {}
    for scheme, steps, cfg, batch, ms in _IMAGE.findall(text):
        guidance = f", guidance {float(cfg):g}" if float(cfg) != 1.0 else ""
        out[f"{scheme} {steps} steps, b{batch}{guidance}"] = float(ms)
    for tokens, ms in _CAPTION.findall(text):
        out[f"ar caption {tokens}"] = float(ms)
    return out
