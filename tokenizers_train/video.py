"""The video family (``vqvae_video``): no training of its own, it wraps the trained RGB tokenizer.

``run`` loads ``rgb_tokenizer`` (default: ``out/tok_rgb``, where ``train-tokenizer`` saves the RGB
tokenizer of the same tokenizers folder) and saves the per-frame video tokenizer to ``out/tok_video``,
weights included, so train the RGB tokenizer first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fourm.modalities import VIDEO_FRAMES
from fourm.pretrained import load_pretrained
from fourm.tokenization.video import VideoTokenizer
from fourm.tokenization.vqvae import ImageVQVAE
from tokenizers_train.data import tokenizer_dir


@dataclass
class Config:
    family: str = "vqvae_video"
    corpus: str | None = None  # unused: the frames' tokenizer is trained on rgb
    modality: str = "tok_video"
    num_frames: int = VIDEO_FRAMES
    rgb_tokenizer: str | None = None  # a tok_rgb folder; None: <out>/tok_rgb

    def __post_init__(self):
        if self.family != "vqvae_video":
            raise ValueError(f"family must be vqvae_video for this trainer, not {self.family!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, not {self.num_frames}")


def run(cfg: Config, out: Path, progress: bool = True) -> VideoTokenizer:
    path = Path(cfg.rgb_tokenizer) if cfg.rgb_tokenizer else Path(out) / "tok_rgb"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no RGB tokenizer at {path}: train configs/tokenizers/rgb.yaml into the same "
                                "--out first, or set rgb_tokenizer=PATH")
    image = load_pretrained(path)
    if not isinstance(image, ImageVQVAE) or image.config.source != "rgb":
        raise ValueError(f"{path} holds no RGB image tokenizer")
    model = VideoTokenizer.wrap(image, cfg.num_frames)
    model.save_pretrained(tokenizer_dir(out, cfg.modality))
    return model
