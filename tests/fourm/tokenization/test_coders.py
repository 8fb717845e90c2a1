"""Trained mask and pose coders: the protocol, the serializers over them, saved and loaded with the tokenizer."""

import shutil

import numpy as np
import pytest
import torch

from fourm.pretrained import load_pretrained
from fourm.tokenization.coders import MASK_CODERS, POSE_CODERS, MaskCoder, PoseCoder, VQVAEMaskCoder, VQVAEPoseCoder
from fourm.tokenization.mlp_vqvae import VectorVQVAE, VectorVQVAEConfig
from fourm.tokenization.serializers import get_serializer
from fourm.tokenization.text import SequenceTokenizer, TextConfig
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE
from tokenizers_train.vector import synthetic_people


def mask_model(codec: str = "mask") -> ImageVQVAE:
    torch.manual_seed(0)
    return ImageVQVAE(ImageVQConfig(modality="sam_instance_mask", source="sam_instance", codec=codec, image_size=8,
                                    patch_size=4, dim=16, encoder_depth=1, decoder_depth=1, heads=2,
                                    codebook_size=32, codebook_dim=8))


def pose_model(source: str = "human_poses") -> VectorVQVAE:
    torch.manual_seed(0)
    return VectorVQVAE(VectorVQVAEConfig(modality="pose_vqvae", source=source, input_dim=99 if source == "human_poses"
                                         else 8, num_tokens=4, dim=32, depth=1, mlp_ratio=2, quantizer="fsq",
                                         levels=[4, 4], loss="smooth_l1"))


def instance_map() -> np.ndarray:
    ids = np.zeros((64, 64), np.uint16)
    ids[5:25, 8:20] = 1
    ids[30:40, 30:62] = 2
    return ids


def test_registered_beside_the_grids():
    assert MASK_CODERS["vqvae"] is VQVAEMaskCoder and POSE_CODERS["vqvae"] is VQVAEPoseCoder


def test_mask_coder_is_the_models_encode_and_decode():
    model = mask_model()
    coder = VQVAEMaskCoder(model)
    assert isinstance(coder, MaskCoder)
    assert (coder.mask_size, coder.num_tokens, coder.vocab_size) == (8, 4, 32)
    masks = np.random.default_rng(0).uniform(size=(3, 8, 8)) > 0.5
    ids = coder.encode(masks)
    assert ids.shape == (3, 4) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 32
    np.testing.assert_array_equal(ids, model.encode(masks).numpy())
    back = coder.decode(ids)
    assert back.shape == (3, 8, 8) and back.dtype == bool
    np.testing.assert_array_equal(back, model.decode(torch.from_numpy(ids)))
    with pytest.raises(ValueError, match="expected masks"):
        coder.encode(masks[:, :4])
    with pytest.raises(ValueError, match="'mask' codec"):
        VQVAEMaskCoder(mask_model(codec="sam_edge"))


def test_pose_coder_is_the_models_encode_and_decode():
    model = pose_model()
    coder = VQVAEPoseCoder(model)
    assert isinstance(coder, PoseCoder)
    assert (coder.num_keypoints, coder.num_tokens, coder.vocab_size) == (33, 4, 16)
    people = synthetic_people(3, seed=1)
    rel = np.stack([model.to_vectors([p]).numpy().reshape(33, 3) for p in people])
    ids = coder.encode(rel)
    np.testing.assert_array_equal(ids, model.encode(people).numpy())
    back = coder.decode(ids)
    assert back.shape == (3, 33, 3) and back[..., 2].min() >= 0 and back[..., 2].max() <= 1
    np.testing.assert_allclose(back[..., :2], model.decode_vectors(ids).numpy().reshape(3, 33, 3)[..., :2],
                               atol=1e-6)
    with pytest.raises(ValueError, match="expected keypoints"):
        coder.encode(rel[:, :5])
    with pytest.raises(ValueError, match="pose VQ-VAE"):
        VQVAEPoseCoder(pose_model(source="caption_global"))


def test_serializers_round_trip_through_a_trained_coder():
    coder = VQVAEMaskCoder(mask_model())
    sam = get_serializer("sam_instance", mask_coder=coder)
    ids = instance_map()
    units = sam.to_units(ids)
    assert [len(u) for u in units] == [4 + 4, 4 + 4]  # box + the coder's 4 codes
    back = sam.from_tokens(sam.to_tokens(ids))
    # whatever the (untrained) coder paints stays inside the instances' boxes
    boxes = np.zeros((64, 64), bool)
    boxes[5:25, 8:20] = boxes[30:40, 30:62] = True
    assert back.shape == (64, 64) and set(np.unique(back)) <= {0, 1, 2} and not (back[~boxes]).any()
    poses = get_serializer("human_poses", pose_coder=VQVAEPoseCoder(pose_model()))
    people = synthetic_people(2, seed=3)
    back = poses.from_tokens(poses.to_tokens(people))
    assert len(back) == 2 and all(len(p["keypoints"]) == 33 for p in back)


@pytest.mark.parametrize("modality", ["sam_instance", "human_poses"])
def test_a_saved_tokenizer_carries_its_trained_coder(tmp_path, modality):
    coders = {"mask_coder": VQVAEMaskCoder(mask_model()), "pose_coder": VQVAEPoseCoder(pose_model())}
    tok = SequenceTokenizer.from_vocabulary(TextConfig(modality), ["cube"], **coders)
    assert (tok.config.mask_coder, tok.config.pose_coder) == ("vqvae", "vqvae")
    values = [instance_map()] if modality == "sam_instance" else [synthetic_people(2, seed=4)]
    ids = tok.encode(values)
    tok.save_pretrained(tmp_path / modality)
    assert (tmp_path / modality / "mask_coder" / "model.safetensors").is_file()
    loaded = load_pretrained(tmp_path / modality)
    assert isinstance(loaded.mask_coder, VQVAEMaskCoder) and isinstance(loaded.pose_coder, VQVAEPoseCoder)
    assert loaded.encode(values) == ids
    if modality == "sam_instance":
        np.testing.assert_array_equal(loaded.decode(ids)[0], tok.decode(ids)[0])
    else:
        assert loaded.decode(ids) == tok.decode(ids)
    shutil.rmtree(tmp_path / modality / "mask_coder")
    with pytest.raises(FileNotFoundError, match="mask_coder/ is missing"):
        load_pretrained(tmp_path / modality)


def test_a_batch_is_encoded_as_its_samples_one_by_one():
    tok = SequenceTokenizer.from_vocabulary(TextConfig("sam_instance"), [], mask_coder=VQVAEMaskCoder(mask_model()))
    maps = [instance_map(), np.zeros((64, 64), np.uint16), instance_map()[::-1].copy()]
    assert tok.encode(maps) == [row for m in maps for row in tok.encode([m])]
    assert tok.encode([np.zeros((64, 64), np.uint16)]) == [[tok.eos_id]]


def test_a_trained_coder_named_but_not_given_is_a_clear_error():
    with pytest.raises(ValueError, match="trained model: pass mask_coder="):
        SequenceTokenizer.from_vocabulary(TextConfig("sam_instance", mask_coder="vqvae"), [])
