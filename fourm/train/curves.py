"""Training metrics: one JSON line per log step, a PNG of the curves a person looks at, and
TensorBoard event files when the ``tensorboard`` package is installed (it is optional)."""

from __future__ import annotations

import json
from pathlib import Path

from fourm.io import atomic_path


class MetricsLog:
    """Appends rows to ``metrics.jsonl``; on resume, drops rows past the checkpoint's step first.

    With ``tensorboard`` (a folder) and the package installed, every numeric field of a row is also
    a TensorBoard scalar at the row's step; a resumed run purges the events past its checkpoint
    there too, so both logs show one curve.
    """

    def __init__(self, path: str | Path, keep_until: int = 0, enabled: bool = True,
                 tensorboard: str | Path | None = None):
        self.path, self.enabled, self.last, self.board = Path(path), enabled, {}, None
        if not enabled:
            return
        rows = read_metrics(self.path) if keep_until else []
        kept = [r for r in rows if r.get("step", 0) <= keep_until]
        with atomic_path(self.path) as tmp:  # a kill here keeps the old history, not half of it
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard is not None:
            self.board = tensorboard_writer(tensorboard, purge_step=keep_until + 1 if keep_until else None)

    def write(self, row: dict) -> None:
        self.last.update(row)
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(key, value, global_step=row.get("step"))

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (at checkpoints: a killed run loses none before them)."""
        if self.board is not None:
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def plot(self, png: str | Path) -> None:
        plot_metrics(read_metrics(self.path), png)


def tensorboard_writer(folder: str | Path, purge_step: int | None = None):
    """A ``SummaryWriter`` into ``folder``, or None when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package, an optional install
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics log. Rows are appended as a run goes, so a kill can leave the last one
    half written: that one is dropped. A damaged row anywhere else is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} is damaged at line {i + 1}: not a JSON row")
        rows.append(row)
    return rows


def plot_metrics(rows: list[dict], png: str | Path, title: str = "") -> None:
    """Training loss (log scale) on the left, every held-out metric on its own panel to the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    evals = sorted({k for r in rows for k in r if k.startswith("eval/")})
    fig, axes = plt.subplots(1, 1 + len(evals), figsize=(4 * (1 + len(evals)), 3.2), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    positive = train and min(r["loss"] for r in train) > 0
    ax.set(xlabel="step", ylabel="train loss", yscale="log" if positive else "linear")
    for ax, key in zip(axes[0][1:], evals, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker="o", ms=3)
        ax.set(xlabel="step", title=key[5:])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
