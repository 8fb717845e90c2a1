"""Model labellers through ``transformers``: depth, semantic segmentation, CLIP and DINOv2 features,
captions and detections (SAM instances live in :mod:`pseudolabel.labellers.hf_sam`).

Each labeller is configured by ``model`` (a hub id or a local folder written by ``save_pretrained``),
``device`` and ``batch_size``; :class:`HFLabeller` holds the shared plumbing (loading with the
``Auto*`` classes, batching, preprocessing with the checkpoint's own processor), so a labeller is
only its post-processing. None runs by default: they need weights, so a run names them and a model.

The reference labelled 4M-21 with Omnidata DPT (depth), Mask2Former (COCO panoptic classes), CLIP
ViT-B/16, DINOv2 ViT-B/14 and ViTDet (arXiv 2406.09406, Table 1); any checkpoint of the same
families works here. ImageBind has no ``transformers`` port, so there is no ImageBind labeller.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np

from pseudolabel.labellers.base import Labeller, labeller


class settings_method:
    """A method bound to the instance when called on one, else to the class.

    ``available()`` is a classmethod on :class:`Labeller`; model labellers also need their settings
    (is a ``model`` set?), so on an instance it reads them and on the class it reads the defaults.
    """

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, owner):
        return self.fn.__get__(owner if obj is None else obj)


def label_names(config) -> list[str]:
    """A checkpoint's ``id2label`` as a list in id order (gaps named by their id)."""
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, str(i)) for i in range(max(id2label, default=-1) + 1)]


@dataclasses.dataclass
class HFLabeller(Labeller):
    """Shared base: loads ``model`` in :meth:`setup`, cuts samples into batches, preprocesses ``rgb``.

    Args:
        model: hub id or local folder holding the weights and the processor; ``None`` = unavailable.
        device: torch device the model runs on.
        batch_size: images per forward pass.

    Subclasses set ``model_classes`` (``transformers`` class names, the first whose auto-mapping takes
    the checkpoint's config is used) and implement :meth:`label_batch`.
    """

    exact = False

    model: str | None = None
    device: str = "cpu"
    batch_size: int = 8

    needs = ("rgb",)
    default = False
    model_classes: ClassVar[tuple[str, ...]] = ("AutoModel",)

    @settings_method
    def available(self) -> tuple[bool, str]:
        try:
            import transformers  # noqa: F401
        except ImportError:
            return False, "the transformers package is not installed"
        if self.model is None:
            return False, f"{self.name} needs model=<hub id or folder> (no default checkpoint)"
        model = str(self.model)
        # a hub id is NAME or ORG/NAME; anything else is a folder, which must be there (checked while
        # planning, so a typo costs no plan and no model download)
        if (model.startswith(("/", ".", "~")) or model.count("/") > 1) and not os.path.isdir(os.path.expanduser(model)):
            return False, f"model {model}: no such folder"
        return True, ""

    def setup(self, classes: dict[str, list[str]]) -> None:
        import transformers

        ok, why = self.available()
        if not ok:
            raise RuntimeError(why)
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(self.model)
            self._model = self._load_model(transformers).to(self.device).eval()
        except OSError as e:  # not on the hub, not cached offline, or a folder without its files
            raise ValueError(f"{self.name}: cannot load model {self.model!r}: {str(e).splitlines()[0]}") from None

    def _load_model(self, transformers):
        config = transformers.AutoConfig.from_pretrained(self.model)
        for name in self.model_classes:
            cls = getattr(transformers, name)
            mapping = getattr(cls, "_model_mapping", None)  # Auto classes only
            if mapping is None or type(config) in mapping:
                return cls.from_pretrained(self.model)
        raise ValueError(f"{self.name}: {self.model!r} is a {config.model_type!r} checkpoint, which none of "
                         f"{', '.join(self.model_classes)} loads")

    def inputs(self, images: list[np.ndarray], **kwargs):
        """The processor's tensors for ``images`` (uint8 (H, W, 3)), on the model's device."""
        from PIL import Image

        pil = [Image.fromarray(image) for image in images]
        return self._processor(images=pil, return_tensors="pt", **kwargs).to(self.device)

    def label(self, samples: list[dict]) -> list[dict]:
        import torch

        # batch images of one size together: processors that keep the aspect ratio (DPT, Depth
        # Anything) return one tensor size per input size, which cannot be stacked
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s["rgb"].shape, []).append(i)
        out: list[dict] = [{} for _ in samples]
        with torch.inference_mode():
            for idx in groups.values():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start:start + self.batch_size]
                    for i, o in zip(chunk, self.label_batch([samples[i]["rgb"] for i in chunk]), strict=True):
                        out[i] = o
        return out

    def label_batch(self, images: list[np.ndarray]) -> list[dict]:
        raise NotImplementedError


@labeller
class Depth(HFLabeller):
    """Monocular depth (DPT, Depth Anything, GLPN, ...) as positive, metre-like values.

    Relative models have no scale and most (MiDaS DPT, Depth Anything) predict disparity. Disparity
    is inverted after raising values below ``min_disparity`` x the image's 99th-percentile disparity
    to that floor, so the sky and noise (<= 0) become a far plane ``1 / min_disparity`` times the
    nearest surfaces instead of infinity. Then each image is scaled so its median depth is
    ``median_depth`` metres, a typical scene distance that keeps values inside the corpus's uint16
    millimetres; ``median_depth=None`` keeps the model's own values (metric models, ``output="depth"``).

    Args:
        output: what the model predicts: ``"disparity"`` (inverse depth) or ``"depth"``.
        median_depth: per-image median in metres after scaling; ``None`` = no scaling.
        min_disparity: disparity floor, as a fraction of the image's 99th percentile.
        max_depth: clip in metres (the corpus stores at most 65.535 m); depth <= 0 means unknown.
    """

    name = "depth"
    produces = ("depth",)
    model_classes = ("AutoModelForDepthEstimation",)

    output: str = "disparity"
    median_depth: float | None = 3.0
    min_disparity: float = 0.01
    max_depth: float = 65.0

    def __post_init__(self):
        if self.output not in ("depth", "disparity"):
            raise ValueError(f"depth: output must be 'depth' or 'disparity', not {self.output!r}")

    def label_batch(self, images):
        import torch.nn.functional as F

        outputs = self._model(**self.inputs(images))
        sizes = [image.shape[:2] for image in images]
        post = getattr(self._processor, "post_process_depth_estimation", None)
        if post is not None:
            preds = [r["predicted_depth"] for r in post(outputs, target_sizes=sizes)]
        else:
            preds = [F.interpolate(d[None, None], size=s, mode="bilinear")[0, 0]
                     for d, s in zip(outputs.predicted_depth, sizes, strict=True)]
        return [{"depth": self.to_depth(p.float().cpu().numpy())} for p in preds]

    def to_depth(self, pred: np.ndarray) -> np.ndarray:
        """Model output (H, W) -> float32 depth (H, W), 0 where unknown."""
        pred = np.nan_to_num(pred.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if self.output == "disparity":
            top = np.percentile(pred, 99)
            if top <= 0:
                return np.zeros_like(pred)
            depth = 1.0 / np.maximum(pred, top * self.min_disparity)
        else:
            depth = np.maximum(pred, 0.0)
        valid = depth > 0
        if self.median_depth is not None and valid.any():
            depth *= self.median_depth / np.median(depth[valid])
        return np.clip(depth, 0.0, self.max_depth).astype(np.float32)


@labeller
class Semseg(HFLabeller):
    """Semantic classes per pixel: semantic models (SegFormer, BEiT, UperNet, ...) or universal ones
    (Mask2Former, MaskFormer), through the processor's ``post_process_semantic_segmentation``.
    OneFormer needs a task prompt and is not supported. Ids are uint8, so at most 255 classes."""

    name = "semseg"
    produces = ("semseg",)
    model_classes = ("AutoModelForSemanticSegmentation", "AutoModelForUniversalSegmentation")

    def setup(self, classes):
        super().setup(classes)
        num = len(label_names(self._model.config))
        if num > 255:
            raise ValueError(f"semseg: {self.model!r} has {num} classes; uint8 id maps hold at most 255")
        if not hasattr(self._processor, "post_process_semantic_segmentation"):
            raise ValueError(f"semseg: the processor of {self.model!r} has no post_process_semantic_segmentation")

    def classes(self):
        return {"semseg": label_names(self._model.config)}

    def label_batch(self, images):
        outputs = self._model(**self.inputs(images))
        maps = self._processor.post_process_semantic_segmentation(
            outputs, target_sizes=[image.shape[:2] for image in images])
        return [{"semseg": m.cpu().numpy().astype(np.uint8)} for m in maps]


@dataclasses.dataclass
class PatchFeatures(HFLabeller):
    """A ViT's last-layer patch tokens as a feature map (h, w, C) float16 and, when ``produces`` has a
    second key, its CLS token (C,). Register tokens and the CLS token are dropped from the map; the
    grid follows the processed image (``pixel_values`` size / ``patch_size``)."""

    def label_batch(self, images):
        from einops import rearrange

        inputs = self.inputs(images)
        hidden = self._model(**inputs).last_hidden_state  # (B, 1 + registers + h * w, C)
        patch = self._model.config.patch_size
        h, w = (side // patch for side in inputs["pixel_values"].shape[-2:])
        grid = rearrange(hidden[:, hidden.shape[1] - h * w:], "b (h w) c -> b h w c", h=h, w=w)
        grid = grid.half().cpu().numpy()
        feature_key, *global_key = self.produces
        out = [{feature_key: g} for g in grid]
        for o, vector in zip(out, hidden[:, 0].half().cpu().numpy(), strict=True):
            o.update({k: vector for k in global_key})
        return out


@labeller
class Clip(PatchFeatures):
    """CLIP image-encoder patch features (the reference: ViT-B/16), from a CLIP or CLIP-vision checkpoint."""

    name = "clip"
    produces = ("clip",)
    model_classes = ("CLIPVisionModel",)


@labeller
class Dinov2(PatchFeatures):
    """DINOv2 patch features and CLS vector (the reference: ViT-B/14); registers variants work too."""

    name = "dinov2"
    produces = ("dinov2", "dinov2_global")
    model_classes = ("AutoModel",)


@labeller
class Caption(HFLabeller):
    """Greedy captions from an image-to-text model (BLIP, GIT, VisionEncoderDecoder, ...).

    Args:
        max_new_tokens: caption length limit in tokens.
        prompt: text the caption continues (BLIP: ``"a picture of"``); removed from the result.
    """

    name = "caption"
    produces = ("caption",)
    model_classes = ("AutoModelForImageTextToText",)

    max_new_tokens: int = 30
    prompt: str | None = None

    def setup(self, classes):
        super().setup(classes)
        self._tokenizer = getattr(self._processor, "tokenizer", self._processor)
        if not hasattr(self._processor, "image_processor"):
            # VisionEncoderDecoder checkpoints ship an image processor and a tokenizer, no processor class
            import transformers

            if self.prompt:
                raise ValueError(f"caption: {self.model!r} has no text processor, so it takes no prompt")
            self._processor = transformers.AutoImageProcessor.from_pretrained(self.model)

    def label_batch(self, images):
        text = {"text": [self.prompt] * len(images)} if self.prompt else {}
        ids = self._model.generate(**self.inputs(images, **text), max_new_tokens=self.max_new_tokens,
                                   do_sample=False, num_beams=1)
        captions = [c.strip() for c in self._tokenizer.batch_decode(ids, skip_special_tokens=True)]
        if self.prompt:
            prefix = self.prompt.strip().lower()
            captions = [c[len(prefix):].strip() if c.lower().startswith(prefix) else c for c in captions]
        return [{"caption": c} for c in captions]


@labeller
class Det(HFLabeller):
    """Object boxes from a DETR-style detector (DETR, Conditional/Deformable DETR, RT-DETR, YOLOS).

    Args:
        threshold: minimum score.
        max_detections: keep the best this many per image (the det sequence holds about 50 objects).
    """

    name = "det"
    produces = ("det",)
    model_classes = ("AutoModelForObjectDetection",)

    threshold: float = 0.5
    max_detections: int = 50

    def classes(self):
        return {"det": label_names(self._model.config)}

    def label_batch(self, images):
        outputs = self._model(**self.inputs(images))
        # no target_sizes: boxes stay (x0, y0, x1, y1) relative to each image, padding excluded
        results = self._processor.post_process_object_detection(outputs, threshold=self.threshold)
        names = label_names(self._model.config)
        out = []
        for r in results:
            order = r["scores"].argsort(descending=True)[: self.max_detections]
            objects = []
            for i in order.tolist():
                box = r["boxes"][i].clamp(0, 1).tolist()
                if box[2] > box[0] and box[3] > box[1]:
                    label = int(r["labels"][i])
                    objects.append({"box": [round(v, 4) for v in box],
                                    "label": names[label] if label < len(names) else str(label),
                                    "score": round(float(r["scores"][i]), 4)})
            out.append({"det": objects})
        return out
