"""Per-modality pixel codecs: corpus values <-> network tensors, and the loss and metrics of each.

An image tokenizer sees every modality as a float tensor ``(B, C, H, W)``; a codec owns the fixed
map between that tensor and the values the corpus stores (``fourm/modalities.py``), so users hand
the tokenizer raw corpus values and get the same units back (the reference left normalisation to
its users, who tripped over it). Each codec also owns the reconstruction loss suited to its values
and the metrics that say how well a round trip preserves them.

Letters: B batch, C channels, H W pixels (of the image or feature map), K classes.

=============  =========================  ===================  ====================================
codec          corpus value               network channels     loss / metric
=============  =========================  ===================  ====================================
rgb            uint8 (H, W, 3)            3 in [-1, 1]          L1 + L2 / PSNR
depth          float32 metres, 0 unknown  2: log-depth, valid   L1 + L2 on valid, BCE valid / abs-rel
normal         float32 unit, 0 unknown    3 in [-1, 1]          L1 + L2 + angle / mean angle
semseg         uint8 ids                  K one-hot             cross-entropy / mIoU
canny_edge...  uint8 0/255                1 in {0, 1}           BCE / F1 (1 px tolerance)
mask           bool / 0-1 (H, W)          1 in {0, 1}           BCE / IoU, F1
features       float16 (h, w, C)          C                     smooth-L1 + cosine / cosine
xray           float32 attenuation >= 0   1: 2 exp(-a / 2) - 1  L1 + L2 / relative error
thermal        float32 kelvin             1: (T - 290) / 50     L1 + L2 / relative error, kelvin
hyperspectral  uint8 (H, W, C) bands      C in [-1, 1]          L1 + L2 / PSNR, spectral angle
=============  =========================  ===================  ====================================
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from fourm.data.spectra import spectral_angle
from fourm.kinds import rgb_to_model
from fourm.modalities import HYPERSPECTRAL_BANDS
from fourm.registry import Registry

CODECS: Registry[type[PixelCodec]] = Registry("pixel codec", sort=True,
                                              error="no pixel codec for {name!r}; known: {known}")


def register_codec(*names: str):
    """Class decorator: the codec serves the corpus modalities ``names`` (the first is its own name)."""

    def deco(cls):
        cls.name = names[0]
        for name in names:
            CODECS[name] = cls
        return cls

    return deco


def codec_class(name: str) -> type[PixelCodec]:
    return CODECS[name]


def get_codec(name: str, num_classes: int | None = None, channels: int | None = None) -> PixelCodec:
    """The codec for corpus modality ``name``; ``num_classes`` (semseg) / ``channels`` (features)."""
    return codec_class(name)(num_classes=num_classes, channels=channels)


def _stack(values, ndim: int, what: str) -> np.ndarray:
    """A list of per-sample arrays (or an already stacked array) -> one array with a batch axis."""
    array = np.stack([np.asarray(v) for v in values]) if isinstance(values, (list, tuple)) else np.asarray(values)
    if array.ndim == ndim - 1:
        array = array[None]  # one sample
    if array.ndim != ndim:
        raise ValueError(f"{what}: expected samples of {ndim - 1} dims, got an array of shape {array.shape}")
    return array


def _l1_l2(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    # L1 keeps edges sharp, L2 punishes the rare large errors; together they train faster than either
    err = pred - target
    per_pixel = err.abs() + err.square()
    if weight is None:
        return per_pixel.mean()
    weight = weight.expand_as(per_pixel)
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of (B, H, W) bool by a (2r+1)^2 square: tolerance for edge matching."""
    if radius == 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, 1, radius)[:, 0] > 0


class PixelCodec:
    """Base of the codecs: ``in_channels`` go into the encoder, ``out_channels`` come out of the decoder."""

    name: ClassVar[str]
    in_channels: int
    out_channels: int
    value_dims: ClassVar[int] = 3  # dims of one corpus value, (H, W) = 2 or (H, W, C) = 3
    supports_hflip: ClassVar[bool] = True  # a mirrored image is still a valid sample
    channels_from_data: ClassVar[bool] = False  # C is the data's last axis (a trainer fills ``channels`` in)

    def __init__(self, num_classes: int | None = None, channels: int | None = None):
        pass

    def to_input(self, values) -> Tensor:
        """Corpus values (list of arrays or (B, ...) array) -> float32 (B, C_in, H, W)."""
        raise NotImplementedError

    def from_output(self, pred: Tensor) -> np.ndarray:
        """Decoder output (B, C_out, H, W) -> corpus values, stacked (B, ...) in corpus dtype."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss of decoder output ``pred`` against the encoder input ``target``."""
        raise NotImplementedError

    def metrics(self, pred_values, true_values) -> dict[str, float]:
        """Round-trip quality on corpus values, aggregated over the whole batch."""
        raise NotImplementedError

    def hflip(self, x: Tensor) -> Tensor:
        """Mirror network inputs (B, C, H, W) left-right."""
        return x.flip(-1)


# ----------------------------------------------------------------------------- rgb
@register_codec("rgb")
class RGBCodec(PixelCodec):
    in_channels = out_channels = 3

    def to_input(self, values) -> Tensor:
        rgb = _stack(values, 4, self.name)
        if rgb.shape[-1] != self.in_channels:
            raise ValueError(f"{self.name}: expected (H, W, {self.in_channels}) images, got {rgb.shape[1:]}")
        return rgb_to_model(rgb)

    def from_output(self, pred: Tensor) -> np.ndarray:
        rgb = ((pred.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rearrange(rgb, "b c h w -> b h w c").cpu().numpy()

    def loss(self, pred, target):
        loss = _l1_l2(pred, target)
        return loss, {"rec": loss.item()}

    def metrics(self, pred_values, true_values):
        pred = _stack(pred_values, 4, "rgb").astype(np.float64)
        true = _stack(true_values, 4, "rgb").astype(np.float64)
        mse = ((pred - true) ** 2).mean(axis=(1, 2, 3))
        psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))  # per image, then averaged
        return {"psnr": float(psnr.mean()), "mae": float(np.abs(pred - true).mean())}


# ----------------------------------------------------------------------------- depth
@register_codec("depth")
class DepthCodec(PixelCodec):
    """Metric depth as log-depth with fixed constants, plus a validity channel.

    ``x = (ln d - LOG_CENTRE) / LOG_SCALE`` maps 0.1 m .. 100 m onto [-1, 1] with the same
    constants for every image, so absolute scale survives the round trip (no per-image
    normalisation to undo) and errors are relative, matching abs-rel. Unknown pixels (d = 0, e.g.
    sky) have no log: they get x = 0 and valid = 0 on the way in, and the decoder predicts a
    validity logit of its own, so they come back as exactly 0 instead of a blur between the
    surface and a sentinel depth.
    """

    in_channels = out_channels = 2
    value_dims = 2
    MIN_DEPTH, MAX_DEPTH = 0.1, 100.0
    LOG_CENTRE = (math.log(MIN_DEPTH) + math.log(MAX_DEPTH)) / 2
    LOG_SCALE = (math.log(MAX_DEPTH) - math.log(MIN_DEPTH)) / 2
    valid_weight = 0.1  # the validity BCE is easy; it should not drown the depth values

    def to_input(self, values) -> Tensor:
        d = torch.from_numpy(_stack(values, 3, "depth").astype(np.float32))
        valid = d > 0
        x = (d.clamp(self.MIN_DEPTH, self.MAX_DEPTH).log() - self.LOG_CENTRE) / self.LOG_SCALE
        return torch.stack([torch.where(valid, x, torch.zeros_like(x)), valid.float()], dim=1)

    def from_output(self, pred: Tensor) -> np.ndarray:
        pred = pred.float()
        d = (pred[:, 0].clamp(-1, 1) * self.LOG_SCALE + self.LOG_CENTRE).exp()
        return torch.where(pred[:, 1] > 0, d, torch.zeros_like(d)).cpu().numpy().astype(np.float32)

    def loss(self, pred, target):
        valid = target[:, 1:2]
        value = _l1_l2(pred[:, :1], target[:, :1], valid)
        validity = F.binary_cross_entropy_with_logits(pred[:, 1], target[:, 1])
        return value + self.valid_weight * validity, {"rec": value.item(), "valid_bce": validity.item()}

    def metrics(self, pred_values, true_values):
        pred = _stack(pred_values, 3, "depth").astype(np.float64)
        true = _stack(true_values, 3, "depth").astype(np.float64)
        valid = true > 0
        p, t = pred[valid], true[valid]
        ratio = np.maximum(p / t, t / np.maximum(p, 1e-9))
        return {"abs_rel": float(np.mean(np.abs(p - t) / t)), "delta1": float(np.mean(ratio < 1.25)),
                "valid_acc": float(np.mean((pred > 0) == valid))}


# ----------------------------------------------------------------------------- normals
@register_codec("normal")
class NormalCodec(PixelCodec):
    """Unit normals (camera frame) as 3 channels in [-1, 1]; unknown pixels are the zero vector.

    The decoder's vector is renormalised on the way out; one shorter than 0.5 means "unknown".
    The angular term trains directly what the metric measures.
    """

    in_channels = out_channels = 3
    angle_weight = 0.5

    def to_input(self, values) -> Tensor:
        n = _stack(values, 4, "normal")
        if n.shape[-1] != 3:
            raise ValueError(f"normal: expected (H, W, 3) normals, got {n.shape[1:]}")
        return rearrange(torch.from_numpy(n.astype(np.float32)), "b h w c -> b c h w")

    def from_output(self, pred: Tensor) -> np.ndarray:
        pred = pred.float()
        norm = pred.norm(dim=1, keepdim=True)
        n = torch.where(norm > 0.5, pred / norm.clamp(min=1e-6), torch.zeros_like(pred))
        return rearrange(n, "b c h w -> b h w c").cpu().numpy().astype(np.float32)

    def loss(self, pred, target):
        rec = _l1_l2(pred, target)
        valid = target.norm(dim=1) > 0.5
        cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)
        angle = ((1 - cos) * valid).sum() / valid.sum().clamp(min=1)
        return rec + self.angle_weight * angle, {"rec": rec.item(), "one_minus_cos": angle.item()}

    def hflip(self, x):
        # a mirrored image mirrors its surfaces: their normals' x component changes sign
        x = x.flip(-1)
        return torch.cat([-x[:, :1], x[:, 1:]], dim=1)

    def metrics(self, pred_values, true_values):
        pred = _stack(pred_values, 4, "normal").astype(np.float64)
        true = _stack(true_values, 4, "normal").astype(np.float64)
        true_norm = np.linalg.norm(true, axis=-1)
        valid = true_norm > 0.5
        p, t = pred[valid], true[valid] / true_norm[valid][:, None]
        p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-9)  # unknown (0) -> 90 degrees
        angle = np.degrees(np.arccos(np.clip((p * t).sum(-1), -1, 1)))
        return {"angle_mean": float(angle.mean()), "angle_median": float(np.median(angle)),
                "within_11.25": float(np.mean(angle < 11.25))}


# ----------------------------------------------------------------------------- semantic classes
@register_codec("semseg")
class SemsegCodec(PixelCodec):
    """Class ids as ``num_classes`` one-hot channels; ids >= num_classes (e.g. 255) are ignored."""

    value_dims = 2

    def __init__(self, num_classes: int | None = None, channels: int | None = None):
        if not num_classes or num_classes < 2:
            raise ValueError(f"semseg codec needs num_classes >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = self.out_channels = num_classes

    def to_input(self, values) -> Tensor:
        ids = torch.from_numpy(_stack(values, 3, "semseg").astype(np.int64))
        # one_hot of an out-of-range id is an all-zero vector: "ignore"
        onehot = F.one_hot(ids.clamp(max=self.num_classes), self.num_classes + 1)[..., :self.num_classes]
        return rearrange(onehot.float(), "b h w k -> b k h w")

    def from_output(self, pred: Tensor) -> np.ndarray:
        return pred.argmax(1).to(torch.uint8).cpu().numpy()

    def loss(self, pred, target):
        labels = torch.where(target.sum(1) > 0, target.argmax(1), torch.full_like(target[:, 0], -100).long())
        loss = F.cross_entropy(pred.float(), labels, ignore_index=-100)
        return loss, {"ce": loss.item()}

    def metrics(self, pred_values, true_values):
        """mIoU over the classes present in the truth, counted over the whole set (not per image)."""
        pred = _stack(pred_values, 3, "semseg").astype(np.int64).ravel()
        true = _stack(true_values, 3, "semseg").astype(np.int64).ravel()
        keep = true < self.num_classes
        pred, true = pred[keep], true[keep]
        k = self.num_classes
        confusion = np.bincount(true * k + np.clip(pred, 0, k - 1), minlength=k * k).reshape(k, k)
        inter = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - inter
        present = confusion.sum(1) > 0
        iou = inter[present] / union[present]
        return {"miou": float(iou.mean()), "pixel_acc": float(inter.sum() / max(1, confusion.sum()))}


# ----------------------------------------------------------------------------- binary maps
class BinaryCodec(PixelCodec):
    """One {0, 1} channel in, one logit out; BCE, and F1 with a ``tolerance`` in pixels."""

    in_channels = out_channels = 1
    value_dims = 2
    tolerance = 1
    pos_weight = 1.0  # edges are a few % of pixels; >1 trades precision for recall

    def to_input(self, values) -> Tensor:
        return torch.from_numpy(_stack(values, 3, self.name) > 0).float()[:, None]

    def loss(self, pred, target):
        weight = torch.tensor(self.pos_weight, device=pred.device)
        loss = F.binary_cross_entropy_with_logits(pred.float(), target, pos_weight=weight)
        return loss, {"bce": loss.item()}

    def metrics(self, pred_values, true_values):
        pred = torch.from_numpy(_stack(pred_values, 3, self.name) > 0)
        true = torch.from_numpy(_stack(true_values, 3, self.name) > 0)
        # a predicted pixel counts if a true one is within the tolerance, and vice versa (BSDS-style)
        precision = (pred & _dilate(true, self.tolerance)).sum() / pred.sum().clamp(min=1)
        recall = (true & _dilate(pred, self.tolerance)).sum() / true.sum().clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-9)
        inter, union = (pred & true).sum(), (pred | true).sum()
        return {"f1": float(f1), "precision": float(precision), "recall": float(recall),
                "iou": float(inter / union.clamp(min=1))}


@register_codec("canny_edge", "sam_edge")
class EdgeCodec(BinaryCodec):
    """Edge maps stored as 0/255 uint8."""

    def from_output(self, pred: Tensor) -> np.ndarray:
        return ((pred[:, 0] > 0).to(torch.uint8) * 255).cpu().numpy()


@register_codec("mask")
class MaskCodec(BinaryCodec):
    """Binary instance masks (SAM mask codes): anything non-zero is inside; decoded as bool."""

    tolerance = 0

    def from_output(self, pred: Tensor) -> np.ndarray:
        return (pred[:, 0] > 0).cpu().numpy()


# ----------------------------------------------------------------------------- feature maps
@register_codec("features", "clip", "dinov2", "imagebind")
class FeatureCodec(PixelCodec):
    """Patch feature maps (h, w, C), e.g. CLIP / DINOv2 / ImageBind; the map is the "image".

    Values pass through unscaled, so decoded features are in the labeller's own units; the loss
    mixes smooth-L1 (magnitudes, the reference's choice for CLIP) with cosine (directions, what
    retrieval and kNN use).
    """

    supports_hflip = False  # a network's features of a mirrored image are not its mirrored features
    channels_from_data = True
    cosine_weight = 1.0

    def __init__(self, num_classes: int | None = None, channels: int | None = None):
        if not channels:
            raise ValueError("features codec needs channels (the feature width C)")
        self.in_channels = self.out_channels = channels

    def to_input(self, values) -> Tensor:
        f = _stack(values, 4, "features")
        if f.shape[-1] != self.in_channels:
            raise ValueError(f"features: expected {self.in_channels} channels, got {f.shape[-1]}")
        return rearrange(torch.from_numpy(f.astype(np.float32)), "b h w c -> b c h w")

    def from_output(self, pred: Tensor) -> np.ndarray:
        return rearrange(pred.float(), "b c h w -> b h w c").cpu().numpy().astype(np.float16)

    def loss(self, pred, target):
        pred = pred.float()
        smooth = F.smooth_l1_loss(pred, target)
        cos = 1 - F.cosine_similarity(pred, target, dim=1, eps=1e-6).mean()
        return smooth + self.cosine_weight * cos, {"smooth_l1": smooth.item(), "one_minus_cos": cos.item()}

    def metrics(self, pred_values, true_values):
        pred = torch.from_numpy(_stack(pred_values, 4, "features").astype(np.float32))
        true = torch.from_numpy(_stack(true_values, 4, "features").astype(np.float32))
        cos = F.cosine_similarity(pred, true, dim=-1, eps=1e-6)
        return {"cosine": float(cos.mean()), "mse": float((pred - true).square().mean())}


# ----------------------------------------------------------------------------- measures beyond vision
class MeasureCodec(PixelCodec):
    """One physical measure per pixel (H, W) through a fixed invertible map onto about [-1, 1]: the same
    constants for every image, so units survive the round trip. Loss L1 + L2; metrics the relative error
    ``sum |pred - true| / sum |true|`` (well defined where the truth is 0) and the mean absolute error."""

    in_channels = out_channels = 1
    value_dims = 2

    def forward(self, values: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def to_input(self, values) -> Tensor:
        return self.forward(torch.from_numpy(_stack(values, 3, self.name).astype(np.float32)))[:, None]

    def from_output(self, pred: Tensor) -> np.ndarray:
        return self.inverse(pred[:, 0].float()).cpu().numpy().astype(np.float32)

    def loss(self, pred, target):
        loss = _l1_l2(pred, target)
        return loss, {"rec": loss.item()}

    def metrics(self, pred_values, true_values):
        pred = _stack(pred_values, 3, self.name).astype(np.float64)
        true = _stack(true_values, 3, self.name).astype(np.float64)
        err = np.abs(pred - true)
        return {"rel_error": float(err.sum() / max(np.abs(true).sum(), 1e-12)), "mae": float(err.mean())}


@register_codec("xray")
class XrayCodec(MeasureCodec):
    """The attenuation integral ``a`` as transmission, ``2 exp(-a / SCALE) - 1``: a radiograph's own
    quantity, bounded however thick the object, most precise where the X-ray passes little matter."""

    SCALE = 2.0

    def forward(self, values):
        return 2 * torch.exp(-values.clamp(min=0) / self.SCALE) - 1

    def inverse(self, x):
        return -self.SCALE * torch.log(((x + 1) / 2).clamp(1e-6, 1.0))


@register_codec("thermal")
class ThermalCodec(MeasureCodec):
    """Kelvin, affinely: 240 K .. 340 K (a clear sky on a frosty day .. sunlit rubber on a hot one) to [-1, 1]."""

    CENTRE, SCALE = 290.0, 50.0

    def forward(self, values):
        return (values - self.CENTRE) / self.SCALE

    def inverse(self, x):
        return x * self.SCALE + self.CENTRE


@register_codec("hyperspectral")
class HyperspectralCodec(RGBCodec):
    """C bands stored as the RGB is (uint8, gamma-encoded), scaled as it is; C from ``channels`` (the data's
    width; default the registry's band count). Metrics: PSNR, and the mean spectral angle (degrees) between
    true and decoded linear spectra, the measure of hyperspectral work (Kruse et al. 1993)."""

    channels_from_data = True

    def __init__(self, num_classes: int | None = None, channels: int | None = None):
        self.in_channels = self.out_channels = channels or HYPERSPECTRAL_BANDS

    def metrics(self, pred_values, true_values):
        pred, true = _stack(pred_values, 4, self.name), _stack(true_values, 4, self.name)
        return {**super().metrics(pred, true), "spectral_angle": float(spectral_angle(pred, true).mean())}
