"""The transformers labellers on tiny, randomly initialised checkpoints, through the real load path.

Each checkpoint is built from a config, saved with ``save_pretrained`` next to its processor, and
loaded by the labeller from that folder, once per module. Weights are random, so the tests check
the contract (keys, shapes, dtypes, ranges, class names), not the quality.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pseudolabel.labellers import hf, hf_sam  # noqa: E402
from pseudolabel.registry import lookup  # noqa: E402

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8), RNG.integers(0, 256, (30, 36, 3), dtype=np.uint8)]
NAMES = ["cube", "sphere", "cone", "floor"]
ID2LABEL = dict(enumerate(NAMES))
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "cube", "on", "the", "grass"]
HF_LABELLERS = ["depth", "semseg", "clip", "dinov2", "caption", "det", "sam"]


def scramble(model, std=0.5):
    """Random weights far from the near-zero init, so outputs vary across pixels and queries."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def tokenizer(folder):
    from transformers import BertTokenizer

    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return BertTokenizer(vocab=str(folder / "vocab.txt"), bos_token="[DEC]")


# ---------------------------------------------------------------------------- tiny checkpoints
def build_depth(folder):
    import transformers as t

    backbone = t.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                              patch_size=14, image_size=28, out_features=["stage1", "stage2"],
                              reshape_hidden_states=False)
    config = t.DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=8, head_hidden_size=8,
                                   neck_hidden_sizes=[8, 8], reassemble_hidden_size=16, reassemble_factors=[1, 1])
    scramble(t.DepthAnythingForDepthEstimation(config), 0.2).save_pretrained(folder)
    t.DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                           ensure_multiple_of=14).save_pretrained(folder)
    return {}


def build_semseg(folder):
    import transformers as t

    config = t.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                               patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                               decoder_hidden_size=16, id2label=ID2LABEL)
    scramble(t.SegformerForSemanticSegmentation(config)).save_pretrained(folder)
    t.SegformerImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return {}


def build_semseg_m2f(folder):
    """Mask2Former, the reference's segmenter: a universal model, read through its semantic post-process."""
    import transformers as t

    backbone = t.SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                            window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = t.Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False, hidden_dim=32,
                                 mask_feature_size=32, feature_size=32, encoder_feedforward_dim=32,
                                 dim_feedforward=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                                 num_queries=5, id2label=ID2LABEL)  # 32: the pixel decoder's GroupNorm(32)
    scramble(t.Mask2FormerForUniversalSegmentation(config), 0.3).save_pretrained(folder)
    t.Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    return {}


def build_clip(folder):
    import transformers as t

    config = t.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    t.CLIPVisionModel(config).save_pretrained(folder)
    t.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return {}


def build_dinov2(folder):
    import transformers as t

    config = t.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            patch_size=7, image_size=28)
    t.Dinov2Model(config).save_pretrained(folder)
    t.BitImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(folder)
    return {}


def build_caption(folder):
    import transformers as t

    text = dict(vocab_size=len(WORDS), hidden_size=16, encoder_hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                bos_token_id=WORDS.index("[DEC]"), pad_token_id=0, sep_token_id=3, eos_token_id=3)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    model = t.BlipForConditionalGeneration(t.BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    scramble(model, 0.3).save_pretrained(folder)
    t.BlipProcessor(image_processor=t.BlipImageProcessorPil(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer(folder)).save_pretrained(folder)
    return {"max_new_tokens": 5}


def build_caption_ved(folder):
    """VisionEncoderDecoder: image processor and tokenizer saved apart, no processor class."""
    import transformers as t

    encoder = t.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=32, patch_size=8)
    decoder = t.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, is_decoder=True,
                           add_cross_attention=True)
    config = t.VisionEncoderDecoderConfig(encoder=encoder.to_dict(), decoder=decoder.to_dict())
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 0, 3
    scramble(t.VisionEncoderDecoderModel(config), 0.3).save_pretrained(folder)
    t.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer(folder).save_pretrained(folder)
    return {"max_new_tokens": 5}


def build_det(folder):
    import transformers as t

    backbone = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                              out_features=["stage2"])
    config = t.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                          d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=8,
                          id2label=ID2LABEL)
    scramble(t.DetrForObjectDetection(config), 0.3).save_pretrained(folder)
    t.DetrImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(folder)
    return {"threshold": 0.0}


def build_sam(folder):
    import transformers as t

    config = t.SamConfig(
        vision_config=dict(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    t.SamModel(config).save_pretrained(folder)  # its own init gives varied masks; scrambled ones cover all
    image_processor = t.SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                             mask_size={"longest_edge": 16},
                                             mask_pad_size={"height": 16, "width": 16})
    t.SamProcessor(image_processor=image_processor).save_pretrained(folder)
    # random weights predict IoUs near 0: keep every candidate, so the painting runs on many masks
    return {"points_per_side": 4, "points_per_batch": 6, "pred_iou_thresh": -1e9, "stability_thresh": 0.0,
            "min_area": 0.0}


# key -> builder; the labeller is the key up to "_" (semseg_m2f: a second semseg checkpoint)
BUILDERS = {"depth": build_depth, "semseg": build_semseg, "semseg_m2f": build_semseg_m2f, "clip": build_clip,
            "dinov2": build_dinov2, "caption": build_caption, "caption_ved": build_caption_ved, "det": build_det,
            "sam": build_sam}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(key)`` -> (set-up labeller, its output on IMAGES); each checkpoint is built once."""
    cache = {}

    def _run(key):
        if key not in cache:
            folder = tmp_path_factory.mktemp(key)
            settings = BUILDERS[key](folder)
            lab = lookup("labeller", key.split("_")[0])(model=str(folder), **settings)
            lab.setup({})
            cache[key] = lab, lab.label([{"rgb": image} for image in IMAGES])
        return cache[key]

    return _run


# ---------------------------------------------------------------------------- every labeller
@pytest.mark.parametrize("name", HF_LABELLERS)
def test_unavailable_without_model(name):
    cls = lookup("labeller", name)
    assert not cls.default
    ok, why = cls.available()
    assert not ok and "model" in why
    assert cls().available()[0] is False
    assert cls(model="some/checkpoint").available() == (True, "")
    with pytest.raises(RuntimeError, match="model"):
        cls().setup({})


@pytest.mark.parametrize("key", list(BUILDERS))
def test_outputs_have_the_produced_keys(run, key):
    lab, out = run(key)
    assert len(out) == len(IMAGES)
    assert all(set(o) == set(lab.produces) for o in out)


def test_unknown_architecture_is_a_clear_error(run, tmp_path):
    build_clip(tmp_path)  # a CLIP vision checkpoint is no depth model
    with pytest.raises(ValueError, match="clip_vision_model"):
        lookup("labeller", "depth")(model=str(tmp_path)).setup({})


# ---------------------------------------------------------------------------- per labeller
def test_depth(run):
    _, out = run("depth")
    for image, o in zip(IMAGES, out, strict=True):
        depth = o["depth"]
        assert depth.shape == image.shape[:2] and depth.dtype == np.float32
        assert (depth >= 0).all() and np.isfinite(depth).all() and depth.max() <= 65.0
        assert np.median(depth[depth > 0]) == pytest.approx(3.0, rel=0.05)


def test_depth_from_disparity_is_positive_monotone_and_scaled():
    lab = hf.Depth(model="x", median_depth=2.0, min_disparity=0.05)
    disparity = np.array([[4.0, 2.0, 1.0], [0.5, 0.0, -1.0]], np.float32)  # the last two: sky, noise
    depth = lab.to_depth(disparity)
    assert (depth > 0).all() and np.median(depth) == pytest.approx(2.0)
    assert (np.diff(depth[0]) > 0).all()  # nearer (larger disparity) is smaller depth
    assert depth[1, 1] == depth[1, 2] == depth.max()  # floored to one far plane
    metric = hf.Depth(model="x", output="depth", median_depth=None)
    assert metric.to_depth(np.array([[1.5, -2.0]], np.float32)).tolist() == [[1.5, 0.0]]  # <= 0: unknown
    with pytest.raises(ValueError, match="output"):
        hf.Depth(output="inverse")


@pytest.mark.parametrize("key", ["semseg", "semseg_m2f"])
def test_semseg(run, key):
    lab, out = run(key)
    assert lab.classes() == {"semseg": NAMES}
    for image, o in zip(IMAGES, out, strict=True):
        assert o["semseg"].shape == image.shape[:2] and o["semseg"].dtype == np.uint8
        assert o["semseg"].max() < len(NAMES)


def test_semseg_refuses_more_than_255_classes(tmp_path):
    import transformers as t

    config = t.SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], patch_sizes=[7],
                               strides=[4], num_attention_heads=[1], mlp_ratios=[1], decoder_hidden_size=8,
                               num_labels=300)
    t.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path)
    t.SegformerImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="300 classes"):
        hf.Semseg(model=str(tmp_path)).setup({})


def test_clip_patch_grid(run):
    _, out = run("clip")
    for o in out:  # 32 px crop, 8 px patches, CLS dropped
        assert o["clip"].shape == (4, 4, 16) and o["clip"].dtype == np.float16
        assert np.isfinite(o["clip"]).all()


def test_dinov2_grid_and_cls(run):
    lab, out = run("dinov2")
    for o in out:  # 28 px crop, 7 px patches
        assert o["dinov2"].shape == (4, 4, 16) and o["dinov2"].dtype == np.float16
        assert o["dinov2_global"].shape == (16,) and o["dinov2_global"].dtype == np.float16
    # the feature map is the model's patch tokens in row-major order, the global vector its CLS token
    inputs = lab.inputs(IMAGES[:1])
    with torch.no_grad():
        hidden = lab._model(**inputs).last_hidden_state[0].half().numpy()
    np.testing.assert_array_equal(out[0]["dinov2_global"], hidden[0])
    np.testing.assert_array_equal(out[0]["dinov2"][1, 2], hidden[1 + 1 * 4 + 2])


def test_features_do_not_depend_on_the_batch(run):
    lab, out = run("dinov2")
    lab.batch_size = 1
    try:
        alone = lab.label([{"rgb": image} for image in IMAGES])
    finally:
        lab.batch_size = 8
    for a, b in zip(alone, out, strict=True):
        np.testing.assert_allclose(a["dinov2"].astype(np.float32), b["dinov2"].astype(np.float32), atol=1e-2)


@pytest.mark.parametrize("key", ["caption", "caption_ved"])
def test_caption(run, key):
    _, out = run(key)
    for o in out:
        assert isinstance(o["caption"], str)
        assert set(o["caption"].split()) <= set(WORDS[6:])  # special tokens removed
        assert len(o["caption"].split()) <= 5
    if key == "caption":  # the random VisionEncoderDecoder happens to emit only special tokens
        assert all(o["caption"] for o in out)


def test_caption_prompt_is_removed(run):
    lab, _ = run("caption")
    lab.prompt = "a red"
    try:
        out = lab.label([{"rgb": IMAGES[0]}])
    finally:
        lab.prompt = None
    assert isinstance(out[0]["caption"], str) and not out[0]["caption"].startswith("a red")


def test_det(run):
    lab, out = run("det")
    assert lab.classes() == {"det": NAMES}
    assert any(o["det"] for o in out)
    for o in out:
        scores = [d["score"] for d in o["det"]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= lab.max_detections
        for d in o["det"]:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert d["label"] in NAMES and 0 <= d["score"] <= 1


def test_sam(run):
    _, out = run("sam")
    assert any(o["sam_instance"].max() > 1 for o in out)
    for image, o in zip(IMAGES, out, strict=True):
        ids = o["sam_instance"]
        assert ids.shape == image.shape[:2] and ids.dtype == np.uint16
        present = np.unique(ids[ids > 0])
        assert present.tolist() == list(range(1, len(present) + 1))  # ids 1..N, none skipped


def test_paint_instances_puts_smaller_masks_on_top():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2, :2] = True  # small, on top of the large one
    masks[1] = True  # the whole image
    masks[2, 0, 0] = True  # one pixel, the smallest: painted last
    ids = hf_sam.paint_instances(masks)
    assert ids.dtype == np.uint16
    assert ids[0, 0] == 3 and ids[0, 1] == 2 and ids[3, 3] == 1  # by area: whole=1, 2x2=2, pixel=3
    hidden = np.stack([masks[1], masks[1]])  # equal masks: the second covers the first
    assert np.unique(hf_sam.paint_instances(hidden)).tolist() == [1]


def test_mask_nms_drops_overlapping_masks():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :2, :3] = True  # IoU with mask 0: 6 / 8
    masks[2, 2:] = True
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert hf_sam.mask_nms(masks, scores, iou_threshold=0.7, max_masks=10) == [1, 2]
    assert hf_sam.mask_nms(masks, scores, iou_threshold=0.8, max_masks=10) == [1, 2, 0]
    assert hf_sam.mask_nms(masks, scores, iou_threshold=0.8, max_masks=1) == [1]
