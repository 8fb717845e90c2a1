"""SAM instance maps from a point-grid prompt, as in SAM's automatic mask generator (Kirillov et al.
2023, arXiv 2304.02643, Sec. 7.1 / appendix A), with ``transformers``' ``SamModel``.

Each image is encoded once; a ``points_per_side`` x ``points_per_side`` grid of single-point prompts
is decoded in chunks of ``points_per_batch`` (all images of the batch at once), giving three masks
per point. Masks are kept when their predicted IoU and stability score pass the thresholds and they
are not tiny, de-duplicated by mask IoU (greedy, best first), and painted into one uint16 map:
larger masks first, smaller on top, ids 1..N by area, 0 where no mask falls. Filtering works on the
decoder's low-resolution logits; only the kept masks are upsampled to the image size.

``transformers``' "mask-generation" pipeline does the same with crops and box NMS but needs
torchvision; SAM 2 (``Sam2Model``) has another prompt API and is not supported here.
"""

from __future__ import annotations

import numpy as np

from pseudolabel.labellers.base import labeller
from pseudolabel.labellers.hf import HFLabeller


def stability_score(logits, offset: float = 1.0):
    """IoU of the mask thresholded at +offset and at -offset, per mask: (N, h, w) -> (N,)."""
    inner = (logits > offset).flatten(1).sum(1)
    outer = (logits > -offset).flatten(1).sum(1)
    return inner / outer.clamp(min=1)


def mask_nms(masks, scores, iou_threshold: float, max_masks: int) -> list[int]:
    """Greedy non-maximum suppression by mask IoU: indices of kept masks, best score first.

    masks: (N, h, w) bool; scores: (N,).
    """
    flat = masks.flatten(1)
    areas = flat.sum(1)
    kept: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if kept:
            inter = (flat[kept] & flat[i]).sum(1)
            if (inter / (areas[kept] + areas[i] - inter).clamp(min=1)).max() > iou_threshold:
                continue
        kept.append(i)
        if len(kept) == max_masks:
            break
    return kept


def paint_instances(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> uint16 (H, W) id map: larger masks first, smaller on top, ids 1..N by area.

    Masks hidden entirely by smaller ones get no id, so the ids stay 1..(visible count).
    """
    n, h, w = masks.shape
    out = np.zeros((h, w), np.uint16)
    for rank, i in enumerate(np.argsort(-masks.reshape(n, -1).sum(1), kind="stable")):
        out[masks[i]] = rank + 1
    present = np.unique(out[out > 0])
    relabel = np.zeros(n + 1, np.uint16)
    relabel[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
    return relabel[out]


@labeller
class Sam(HFLabeller):
    """SAM (``SamModel`` checkpoints: sam-vit-b/l/h, SlimSAM, ...) with a point-grid prompt.

    Args:
        points_per_side: the prompt grid is points_per_side x points_per_side points.
        points_per_batch: prompts decoded per forward pass, for every image of the batch.
        pred_iou_thresh: minimum predicted IoU of a mask.
        stability_thresh: minimum stability score (IoU of the mask at logit +1 and -1).
        nms_iou: masks overlapping a better one by more than this IoU are dropped.
        min_area: smallest mask, as a fraction of the image.
        max_instances: keep at most this many masks per image, best first.
    """

    name = "sam"
    produces = ("sam_instance",)
    model_classes = ("SamModel",)

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    nms_iou: float = 0.7
    min_area: float = 0.0005
    max_instances: int = 100

    def label_batch(self, images):
        import torch

        inputs = self.inputs(images)
        embeddings = self._model.get_image_embeddings(inputs["pixel_values"])
        pad_h, pad_w = inputs["pixel_values"].shape[-2:]
        resized = inputs["reshaped_input_sizes"].float()  # (B, 2): image size inside the padded input
        n = self.points_per_side
        grid = (torch.arange(n, dtype=torch.float32, device=resized.device) + 0.5) / n
        grid = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)  # (P, 2) as (x, y)
        points = grid[None] * resized[:, None].flip(-1)  # (B, P, 2) in input pixels

        # filter each chunk at once, so only the survivors of a 32 x 32 grid stay in memory
        logits = [[] for _ in images]  # per image, per chunk: candidates (n, h, w) cropped to the image
        scores = [[] for _ in images]  # and their predicted IoUs (n,)
        for start in range(0, points.shape[1], self.points_per_batch):
            chunk = points[:, start:start + self.points_per_batch, None]  # (B, p, 1, 2)
            out = self._model(image_embeddings=embeddings, input_points=chunk,
                              input_labels=torch.ones(chunk.shape[:3], dtype=torch.long, device=chunk.device),
                              multimask_output=True)
            low_h, low_w = out.pred_masks.shape[-2:]
            for b in range(len(images)):
                # the image inside the padding, at the decoder's resolution
                crop_h = max(1, round(float(resized[b, 0]) * low_h / pad_h))
                crop_w = max(1, round(float(resized[b, 1]) * low_w / pad_w))
                candidates = out.pred_masks[b, :, :, :crop_h, :crop_w].flatten(0, 1)  # (p * 3, h, w)
                keep = self._keep(candidates, out.iou_scores[b].flatten())
                logits[b].append(candidates[keep])
                scores[b].append(out.iou_scores[b].flatten()[keep])
        return [{"sam_instance": self._paint(torch.cat(lo), torch.cat(sc), image.shape[:2])}
                for lo, sc, image in zip(logits, scores, images, strict=True)]

    def _keep(self, logits, scores):
        """Candidates (N, h, w) with predicted IoUs (N,) -> bool (N,): good, stable and not tiny."""
        return ((scores >= self.pred_iou_thresh)
                & (stability_score(logits) >= self.stability_thresh)
                & ((logits > 0).flatten(1).float().mean(1) >= max(self.min_area, 1e-12)))

    def _paint(self, logits, scores, size) -> np.ndarray:
        """Kept candidates of one image -> uint16 id map of ``size`` (H, W)."""
        import torch.nn.functional as F

        if len(logits) == 0:
            return np.zeros(size, np.uint16)
        kept = mask_nms(logits > 0, scores, self.nms_iou, self.max_instances)
        full = F.interpolate(logits[kept][None], size=tuple(size), mode="bilinear")[0] > 0
        return paint_instances(full.cpu().numpy())
