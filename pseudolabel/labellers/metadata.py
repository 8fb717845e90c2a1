"""The ``metadata`` modality: image statistics, as in 4M-21 (arXiv 2406.09406, appendix on metadata).

One labeller computes every field of the reference's metadata that its inputs allow; a field whose
input is absent is left out, never guessed. Values are plain ints, or floats rounded to 4 decimals;
the metadata tokenizer bins them.

=====================  ====================================================================  ========
field                  definition                                                            needs
=====================  ====================================================================  ========
original_width/height  size of the source image (``__size__`` if the source recorded it)     rgb
caption_chars/words/   characters, whitespace-separated words, sentences (runs of text        caption
sentences              ended by . ! ? or the end)
num_humans             people in ``human_poses``                                             poses
num_sam_instances      distinct non-zero ids in ``sam_instance``                             sam
num_coco_instances     objects in ``det``                                                    det
instance_diversity     distinct det labels / det objects (0 without objects)                 det
semantic_diversity     semseg classes covering at least ``min_class_share`` of the pixels    semseg
colourfulness          Hasler and Suesstrunk (2003) M = sigma_rgyb + 0.3 mu_rgyb, 0-255 scale  rgb
brightness, contrast   mean and standard deviation of luminance in [0, 1]                    rgb
saturation             mean HSV saturation in [0, 1]                                         rgb
entropy                Shannon entropy (bits) of the 8-bit grey image                        rgb
walkability            share of pixels whose semseg class name is a walkable surface         semseg
objectness             share of pixels inside the union of the det boxes                     det
geometric_complexity   circular variance of the normals, 1 - |mean unit normal|              normal
occlusion_score        share of valid pixels on depth edges (relative jump > threshold)      depth
=====================  ====================================================================  ========

Objectness uses the detector's boxes rather than SAM instances or semseg: detector classes are
object ("thing") classes in every label set we use, whereas neither SAM's class-free instances nor an
arbitrary semseg label set says which regions are stuff (sky, wall) and which are objects.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
from scipy import ndimage
from skimage import color, measure

from pseudolabel.labellers.base import Labeller, labeller

# words of class names that denote surfaces one can walk on (ADE20K, COCO-stuff, Cityscapes names)
WALKABLE = (
    "ground", "floor", "flooring", "road", "route", "street", "sidewalk", "pavement", "path", "grass",
    "lawn", "earth", "soil", "dirt", "sand", "gravel", "rug", "carpet", "carpeting", "mat", "field",
    "playingfield", "terrain", "track", "runway", "platform", "snow", "parking", "crosswalk", "deck",
)


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"[.!?]+(?:\s+|$)", text) if s.strip()])


@labeller
class Metadata(Labeller):
    """Image statistics ``{field: value}`` (see the module table); JSON-serialisable."""

    name: ClassVar[str] = "metadata"
    needs: ClassVar[tuple[str, ...]] = ("rgb",)
    uses: ClassVar[tuple[str, ...]] = (
        "caption", "sam_instance", "det", "human_poses", "semseg", "normal", "depth")
    produces: ClassVar[tuple[str, ...]] = ("metadata",)
    min_class_share: float = 0.001
    depth_edge_jump: float = 0.1  # relative depth change between neighbours that counts as an occlusion edge
    walkable: tuple[str, ...] = WALKABLE

    def __post_init__(self):
        self._num_classes: int | None = None  # size of the semseg label set, once known
        self._walkable_ids = np.zeros(0, np.int64)

    def setup(self, classes: dict[str, list[str]]) -> None:
        names = classes.get("semseg") or []
        self._num_classes = len(names) or None
        walkable = set(self.walkable)
        self._walkable_ids = np.array(
            [i for i, n in enumerate(names) if walkable & set(re.split(r"[^a-z]+", n.lower()))], np.int64)

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"metadata": self._fields(s)} for s in samples]

    def _fields(self, sample: dict) -> dict:
        rgb = sample["rgb"]
        width, height = sample.get("__size__") or (rgb.shape[1], rgb.shape[0])
        out: dict = {"original_width": int(width), "original_height": int(height)}
        out.update(self._caption(sample.get("caption")))
        out.update(self._image(rgb))
        if (poses := sample.get("human_poses")) is not None:
            out["num_humans"] = len(poses)
        if (ids := sample.get("sam_instance")) is not None:
            out["num_sam_instances"] = int(np.count_nonzero(np.unique(ids)))
        if (det := sample.get("det")) is not None:
            out.update(self._det(det, rgb.shape[:2]))
        if (semseg := sample.get("semseg")) is not None:
            out.update(self._semseg(np.asarray(semseg)))
        if (normal := sample.get("normal")) is not None:
            out.update(self._geometry(np.asarray(normal, np.float64)))
        if (depth := sample.get("depth")) is not None:
            out.update(self._occlusion(np.asarray(depth, np.float64)))
        return {k: round(float(v), 4) if isinstance(v, float | np.floating) else int(v)
                for k, v in out.items()}

    @staticmethod
    def _caption(caption) -> dict:
        if caption is None:
            return {}
        text = str(caption)
        return {"caption_chars": len(text), "caption_words": len(text.split()),
                "caption_sentences": _sentences(text)}

    @staticmethod
    def _image(rgb: np.ndarray) -> dict:
        values = rgb.reshape(-1, 3).astype(np.float64)
        rg = values[:, 0] - values[:, 1]
        yb = 0.5 * (values[:, 0] + values[:, 1]) - values[:, 2]
        colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
        luminance = color.rgb2gray(rgb)
        return {
            "colourfulness": float(colourfulness),
            "brightness": float(luminance.mean()),
            "contrast": float(luminance.std()),
            "saturation": float(color.rgb2hsv(rgb)[..., 1].mean()),
            "entropy": float(measure.shannon_entropy(np.round(luminance * 255).astype(np.uint8))),
        }

    @staticmethod
    def _det(det: list[dict], shape: tuple[int, int]) -> dict:
        labels = [d["label"] for d in det]
        h, w = shape
        covered = np.zeros(shape, bool)
        for d in det:
            x0, y0, x1, y1 = np.clip(d["box"], 0.0, 1.0)
            covered[round(y0 * h): round(y1 * h), round(x0 * w): round(x1 * w)] = True
        return {"num_coco_instances": len(det),
                "instance_diversity": len(set(labels)) / len(labels) if labels else 0.0,
                "objectness": float(covered.mean())}

    def _semseg(self, semseg: np.ndarray) -> dict:
        counts = np.bincount(semseg.ravel().astype(np.int64), minlength=self._num_classes or 0)
        present = np.flatnonzero(counts >= self.min_class_share * semseg.size)
        if self._num_classes is None:
            return {"semantic_diversity": len(present)}
        # ids beyond the label set are "ignore" / unlabelled (255 in most label maps)
        return {"semantic_diversity": int(np.sum(present < self._num_classes)),
                "walkability": float(counts[self._walkable_ids].sum() / semseg.size)}

    @staticmethod
    def _geometry(normal: np.ndarray) -> dict:
        length = np.linalg.norm(normal, axis=-1)
        valid = length > 0.5  # zeros mark unknown normals
        if not valid.any():
            return {}
        unit = normal[valid] / length[valid, None]
        return {"geometric_complexity": float(1.0 - np.linalg.norm(unit.mean(0)))}

    def _occlusion(self, depth: np.ndarray) -> dict:
        known = depth > 0
        valid = ndimage.binary_erosion(known, np.ones((3, 3), bool), border_value=1)
        if not valid.any():
            return {}
        # |grad log depth| is the relative depth change per pixel; central differences split a jump
        # between the two pixels beside it, each seeing half of it
        slope = np.hypot(*np.gradient(np.log(np.where(known, depth, 1.0))))
        edge = valid & (slope > np.log1p(self.depth_edge_jump) / 2)
        return {"occlusion_score": float(edge.sum() / valid.sum())}
