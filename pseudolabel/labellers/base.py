"""What every labeller is: a dataclass of settings that maps a batch of samples to new modalities.

A labeller declares what it ``needs`` and what it ``produces`` (corpus modality keys), so the
pipeline can order labellers, drop those whose outputs the source already has (ground truth beats a
model), and record name, version and settings in the manifest. Heavy models are loaded in
:meth:`setup`, once per worker process, never at import or construction.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from pseudolabel.registry import register


@dataclasses.dataclass
class Labeller:
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]
    uses: ClassVar[tuple[str, ...]] = ()  # optional inputs, read when present (ordered before this one)
    produces: ClassVar[tuple[str, ...]]
    version: ClassVar[str] = "1"
    # False for labellers that need weights or optional packages: they run only when asked for.
    default: ClassVar[bool] = True
    # False for neural networks: their float kernels block and sum by thread count and batch shape,
    # so their outputs are bit-stable only for the same threads and batches (see compare_corpora).
    exact: ClassVar[bool] = True

    def setup(self, classes: dict[str, list[str]]) -> None:
        """Load models; called once per worker before the first batch.

        ``classes`` holds the label sets known so far (``{"semseg": [names...], "det": [...]}``) from
        the source or earlier labellers, for labellers that read class ids (metadata's walkability).
        """

    def classes(self) -> dict[str, list[str]]:
        """Label sets this labeller defines (a segmentation model's id2label), after :meth:`setup`."""
        return {}

    def label(self, samples: list[dict]) -> list[dict]:
        """For each sample (a dict holding at least ``needs``) return ``{modality: value}`` for ``produces``."""
        raise NotImplementedError

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether the packages and weights this labeller needs are present, and if not, why."""
        return True, ""

    def settings(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "needs": list(self.needs),
                "produces": list(self.produces), "exact": self.exact, "settings": self.settings()}


def labeller(cls):
    """Class decorator: make ``cls`` a dataclass and register it under ``cls.name``."""
    return register("labeller")(dataclasses.dataclass(cls))
