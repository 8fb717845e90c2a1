"""Labellers that need no model weights: Canny edges, a region-segmentation stand-in for SAM,
instance boundaries, normals from depth, and colour palettes.

They make every corpus modality of 4M-21 (arXiv 2406.09406, Table 1) that a classical algorithm can
approximate, so a corpus built without any weights still has ``canny_edge``, ``sam_instance``,
``sam_edge``, ``normal`` and ``color_palette``. Each works on one image at a time, vectorised within
it; all are deterministic.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage import color, feature, filters, morphology, segmentation

from pseudolabel.labellers.base import Labeller, labeller


@labeller
class CannyEdge(Labeller):
    """Canny edges of the grey image, uint8 (H, W) 0/255.

    Thresholds are quantiles of the smoothed gradient magnitude (so low- and high-contrast photos get
    similar edge densities, which fixed thresholds do not), floored by absolute values so that a flat
    or noise-only image gets no edges instead of its strongest noise. Absolute values are on the scale
    of ``skimage.feature.canny`` for a [0, 1] image (Sobel of a unit step smoothed with sigma 1 is ~1.6).
    """

    name: ClassVar[str] = "canny_edge"
    needs: ClassVar[tuple[str, ...]] = ("rgb",)
    produces: ClassVar[tuple[str, ...]] = ("canny_edge",)
    sigma: float = 1.0
    low_quantile: float = 0.8
    high_quantile: float = 0.9
    min_low: float = 0.05
    min_high: float = 0.1

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"canny_edge": self._edges(s["rgb"])} for s in samples]

    def _edges(self, rgb: np.ndarray) -> np.ndarray:
        grey = color.rgb2gray(rgb)
        # the magnitude canny thresholds (Gaussian, then Sobel), computed once more to take its quantiles
        smoothed = filters.gaussian(grey, sigma=self.sigma)
        magnitude = np.hypot(ndimage.sobel(smoothed, 0), ndimage.sobel(smoothed, 1))
        low, high = np.quantile(magnitude, [self.low_quantile, self.high_quantile])
        low, high = max(low, self.min_low), max(high, self.min_high)
        edges = feature.canny(grey, sigma=self.sigma, low_threshold=low, high_threshold=max(low, high))
        return edges.astype(np.uint8) * 255


@labeller
class RegionInstances(Labeller):
    """A classical stand-in for SAM "segment everything": Felzenszwalb regions as instances.

    uint16 (H, W) ids, 1 = largest region, 0 = no instance. Background regions (sky, wall, floor) are
    kept as instances on purpose: SAM prompted with a point grid also returns masks for them, and the
    ``sam_instance`` tokenizer and ``sam_edge`` should see the same kind of map whichever labeller ran.
    ``scale`` is Felzenszwalb's k (8-bit colour units times pixels; larger: fewer, larger regions).
    Left unscaled it gives similar region counts at 64 and 224 px (coarser images have larger colour
    steps between pixels, which offsets their smaller regions); ``min_share`` is a share of the area.
    Felzenszwalb turns the colour ramp of a soft (anti-aliased, resized) edge into 1-2 px strips, one per
    column of the ramp; regions with no pixel whose 3x3 neighbourhood is all theirs are such strips and
    are given to their nearest neighbours. Regions beyond ``max_instances`` (the smallest) then become
    0, as SAM leaves pixels it has no mask for.
    """

    name: ClassVar[str] = "sam_instance"
    needs: ClassVar[tuple[str, ...]] = ("rgb",)
    produces: ClassVar[tuple[str, ...]] = ("sam_instance",)
    scale: float = 200.0
    sigma: float = 0.8
    min_share: float = 0.006
    max_instances: int = 32

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"sam_instance": self._instances(s["rgb"])} for s in samples]

    def _instances(self, rgb: np.ndarray) -> np.ndarray:
        min_size = max(1, round(self.min_share * rgb.shape[0] * rgb.shape[1]))
        regions = segmentation.felzenszwalb(rgb, scale=self.scale, sigma=self.sigma, min_size=min_size) + 1
        interior = ndimage.minimum_filter(regions, 3) == ndimage.maximum_filter(regions, 3)
        thin = np.bincount(regions[interior], minlength=regions.max() + 1) == 0
        if thin[1:].any() and not thin[1:].all():
            regions = segmentation.expand_labels(np.where(thin[regions], 0, regions), max(regions.shape))
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0
        by_size = np.argsort(-sizes, kind="stable")[: self.max_instances]
        by_size = by_size[sizes[by_size] > 0]
        ids = np.zeros(len(sizes), np.uint16)
        ids[by_size] = np.arange(1, len(by_size) + 1)
        return ids[regions]


@labeller
class InstanceEdge(Labeller):
    """Boundaries of the instance map, uint8 (H, W) 0/255.

    ``find_boundaries`` marks both sides of every boundary (2 px); with ``use_thin`` the lines are
    thinned to 1 px like Canny's, since one tokenizer is shared by ``canny_edge`` and ``sam_edge``.
    Unlabelled pixels (id 0) count as one more region, so gaps SAM left empty are outlined.
    """

    name: ClassVar[str] = "sam_edge"
    needs: ClassVar[tuple[str, ...]] = ("sam_instance",)
    produces: ClassVar[tuple[str, ...]] = ("sam_edge",)
    use_thin: bool = True

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"sam_edge": self._edges(np.asarray(s["sam_instance"]))} for s in samples]

    def _edges(self, ids: np.ndarray) -> np.ndarray:
        edges = segmentation.find_boundaries(ids, connectivity=1, mode="thick")
        if self.use_thin:
            edges = morphology.thin(edges)
        return edges.astype(np.uint8) * 255


@labeller
class DepthNormal(Labeller):
    """Unit surface normals from a depth map, float32 (H, W, 3), camera frame (x right, y up, z to viewer).

    The depth map is back-projected with a pinhole camera of horizontal field of view ``fov_deg``
    (centred principal point, square pixels); the normal is the cross product of the image-space
    gradients of the 3D points, turned to face the camera. Pixels get zeros where the depth or a
    neighbour is unknown (0), and at depth discontinuities: where the surface would have to be
    steeper than ``max_slope_deg`` to the viewing ray to explain the depth change (per-pixel relative
    depth change times focal length, so the test does not depend on the resolution).
    """

    name: ClassVar[str] = "normal"
    needs: ClassVar[tuple[str, ...]] = ("depth",)
    produces: ClassVar[tuple[str, ...]] = ("normal",)
    fov_deg: float = 55.0
    max_slope_deg: float = 85.0

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"normal": self._normals(np.asarray(s["depth"], np.float64))} for s in samples]

    def _normals(self, depth: np.ndarray) -> np.ndarray:
        h, w = depth.shape
        focal = (w / 2) / math.tan(math.radians(self.fov_deg) / 2)
        u = (np.arange(w) + 0.5 - w / 2) / focal
        v = (np.arange(h) + 0.5 - h / 2) / focal
        # points (H, W, 3): x right, y up, the scene at negative z (z points to the viewer)
        rays = np.stack(np.broadcast_arrays(u[None, :], -v[:, None], -np.ones((1, 1))), -1)
        points = depth[..., None] * rays
        d_row, d_col = np.gradient(points, axis=(0, 1))
        normals = np.cross(d_row, d_col)  # rows go down, columns right: this order points to the viewer
        normals *= np.where(np.sum(normals * points, -1, keepdims=True) > 0, -1.0, 1.0)
        length = np.linalg.norm(normals, axis=-1, keepdims=True)

        valid = ndimage.binary_erosion(depth > 0, np.ones((3, 3), bool), border_value=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.hypot(*np.gradient(depth)) / depth * focal
        valid &= slope < math.tan(math.radians(self.max_slope_deg))
        valid &= length[..., 0] > 0
        out = np.where(valid[..., None], normals / np.where(length > 0, length, 1.0), 0.0)
        return out.astype(np.float32)


@labeller
class ColorPalette(Labeller):
    """1 to 7 dominant colours, most frequent first, as ``[[r, g, b], ...]`` ints.

    As in 4M-21, k-means on the pixels (here in CIELAB, on a fixed subsample, seeded). The number of
    colours is the smallest k whose root-mean-square distance of pixels to their centre falls below
    ``max_error`` (CIELAB units; ~2.3 is a just-noticeable difference) or ``max_colors``; then colours
    holding less than ``min_share`` of the pixels are dropped. Each colour is the mean RGB of its
    pixels, so a flat region comes back with its exact value.
    """

    name: ClassVar[str] = "color_palette"
    needs: ClassVar[tuple[str, ...]] = ("rgb",)
    produces: ClassVar[tuple[str, ...]] = ("color_palette",)
    max_colors: int = 7
    max_error: float = 12.0
    min_share: float = 0.03
    num_pixels: int = 1024
    iterations: int = 10
    seed: int = 0

    def label(self, samples: list[dict]) -> list[dict]:
        return [{"color_palette": self._palette(s["rgb"])} for s in samples]

    def _palette(self, rgb: np.ndarray) -> list[list[int]]:
        pixels = rgb.reshape(-1, 3)
        rng = np.random.default_rng(self.seed)
        if len(pixels) > self.num_pixels:
            pixels = pixels[np.sort(rng.choice(len(pixels), self.num_pixels, replace=False))]
        lab = color.rgb2lab(pixels[None])[0]
        centres, assign = lab.mean(0, keepdims=True), np.zeros(len(lab), np.int64)
        for k in range(1, self.max_colors + 1):
            if k > 1:
                centres, assign = kmeans2(lab, k, self.iterations, minit="++", check_finite=False, rng=rng)
            error = np.sqrt(np.mean(np.sum((lab - centres[assign]) ** 2, -1)))
            if error <= self.max_error:
                break
        counts = np.bincount(assign, minlength=len(centres))
        keep = [c for c in np.argsort(-counts, kind="stable") if counts[c] >= self.min_share * len(lab)]
        keep = keep or [int(np.argmax(counts))]
        return [np.round(pixels[assign == c].mean(0)).astype(int).tolist() for c in keep]
