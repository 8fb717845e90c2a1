"""Video tokenizer (per-frame RGB tokens) and the video kind's positions (frame time + patch grid)."""

import numpy as np
import pytest
import torch

from fourm.kinds import handler
from fourm.modalities import named_scale
from fourm.pretrained import load_pretrained
from fourm.tokenization.video import VideoTokenizer
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

pytestmark = pytest.mark.usefixtures("one_thread")

RGB = dict(image_size=16, patch_size=8, dim=16, encoder_depth=1, decoder_depth=1, heads=2, codebook_size=16,
           codebook_dim=4)


def test_frames_go_through_the_rgb_tokenizer_in_order(tmp_path):
    torch.manual_seed(0)
    rgb = ImageVQVAE(ImageVQConfig(**RGB)).eval()
    video = VideoTokenizer.wrap(rgb, num_frames=3)
    clips = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    ids = video.encode(list(clips))
    assert ids.shape == (2, 12) and video.num_tokens == 12 and video.vocab_size == 16
    assert torch.equal(ids[1, 4:8], rgb.encode(clips[1, 1:2])[0])  # frame 1 of clip 1: its own 4 tokens
    out = video.decode(ids)
    assert len(out) == 2 and out[0].shape == (3, 16, 16, 3) and out[0].dtype == np.uint8
    assert np.array_equal(out[1][2], rgb.decode(ids[1:, 8:])[0])
    video.save_pretrained(tmp_path / "tok_video")
    loaded = load_pretrained(tmp_path / "tok_video")
    assert isinstance(loaded, VideoTokenizer) and torch.equal(loaded.encode(list(clips)), ids)
    with pytest.raises(ValueError, match=r"expected videos \(3, H, W, 3\), got shapes \[\(2, 16, 16, 3\)\]"):
        video.encode([clips[0, :2]])


def test_video_positions_are_frame_time_plus_patch_place():
    m = named_scale("cpu").resolve("tok_video")
    m = type(m)(**{**m.__dict__, "max_tokens": 8 * 64})  # what a cpu-scale token corpus states
    pos = handler(m).positions(m, 32)
    assert pos.shape == (512, 32) and len(torch.unique(pos, dim=0)) == 512
    same_patch = pos[3::64]  # patch 3 in each frame: frames differ by their time term alone
    time_step = pos[64 + 5] - pos[5]
    assert torch.allclose(same_patch[1] - same_patch[0], time_step, atol=1e-6)
    with pytest.raises(ValueError, match="not 8 frames of a square grid"):
        handler(m).positions(type(m)(**{**m.__dict__, "max_tokens": 100}), 32)
