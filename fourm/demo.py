"""`fourm demo`: the whole flow on the built-in scenes, each stage cached in ``out``.

Stages so far: the aligned corpus and a picture of its first samples. Tokenizers, model training,
generation and the report join as their issues land.
"""

from __future__ import annotations

from pathlib import Path


def run_demo(out: str = "runs/demo", quick: bool = False) -> dict:
    from fourm.show import save_sample_grid
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    out = Path(out)
    cfg = PseudolabelConfig(source=f"scenes:{64 if quick else 512}", out=str(out / "corpus"), shard_size=64)
    manifest = run_pipeline(cfg)
    print(f"corpus: {manifest['num_samples']} samples, modalities: {', '.join(manifest['modalities'])}")
    for i in range(4):
        path = save_sample_grid(cfg.out, i, out / f"sample-{i}.png")
        print(f"sample {i}: {path}")
    return manifest
