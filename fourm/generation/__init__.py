"""Chained any-to-any generation with FourM (4M, arXiv 2312.06647; 4M-21, arXiv 2406.09406).

Modules: :mod:`~fourm.generation.sampling` (token draws, step and temperature schedules),
:mod:`~fourm.generation.schedule` (:class:`Target`, :class:`Guidance`, :func:`build_schedule`),
:mod:`~fourm.generation.state` (the samples being generated, packed into model batches),
:mod:`~fourm.generation.sampler` (MaskGIT, ROAR and autoregressive schemes; :func:`generate`),
:mod:`~fourm.generation.pipeline` (:class:`Pipeline`: raw values in, raw values out),
:mod:`~fourm.generation.output` (files and grids; ``fourm generate``).

Example::

    from fourm.generation import Pipeline, Target

    pipe = Pipeline.from_pretrained("runs/fourm/model", "runs/tokenizers")
    out = pipe.generate(
        {"caption": "a large red cube to the left of a small blue sphere"},   # one sample's conditions
        ["tok_rgb", Target("tok_depth", steps=12, guidance=3.0), "det"],        # in order; each feeds the next
        seed=0, num_samples=4, temperature=0.8)         # defaults for the targets given by name
    out["tok_rgb"].tokens    # LongTensor (4, N)
    out["tok_rgb"].values    # 4 uint8 (H, W, 3) images, decoded by the tok_rgb tokenizer
    out["det"].values        # 4 lists of boxes, as the corpus stores them

Conditions may also be a list of dicts (a batch of different samples), token ids instead of raw
values (-1 where an image token is to be generated), or a caption with ``[MASK]`` spans to fill.
Lower level: ``GenerationState`` + ``build_schedule`` + ``generate`` work on token tensors alone.
"""

from fourm.generation.pipeline import Generated, Pipeline
from fourm.generation.sampler import SCHEMES, generate
from fourm.generation.schedule import Guidance, Target, build_schedule
from fourm.generation.state import GenerationState

__all__ = ["SCHEMES", "GenerationState", "Generated", "Guidance", "Pipeline", "Target", "build_schedule", "generate"]
