"""A small synthetic token corpus with learnable structure, shared by the FourM training tests."""

import numpy as np
import pytest

from fourm.data.corpus import storage_entry, write_manifest, write_shard
from fourm.kinds import token_count_key
from fourm.modalities import MODALITIES, Storage


def make_token_corpus(root, num_samples: int = 96, shard_size: int = 32, seed: int = 0) -> str:
    """tok_rgb (16 tokens, vocab 32) drawn per sample; tok_depth a fixed function of it; caption a short
    sequence naming the sample's most frequent rgb token: every modality is predictable from the others."""
    rng = np.random.default_rng(seed)
    eos = 3
    modalities = {"tok_rgb": (32, 16), "tok_depth": (32, 16), "caption": (300, 8)}
    storages = {m: Storage("npy", "int16") for m in modalities}
    for shard in range(num_samples // shard_size):
        samples = []
        for j in range(shard_size):
            base = rng.integers(0, 8, 4)
            rgb = np.repeat(base, 4) * 4  # blocky, like an image: a token tells its block
            depth = (rgb * 7 + 3) % 32
            word = 204 + int(np.bincount(rgb, minlength=32).argmax())
            caption = np.array([word, 240 + base[0], 250 + base[1], eos])
            samples.append({"__key__": f"s{shard}-{j}", "tok_rgb": rgb, "tok_depth": depth, "caption": caption})
        write_shard(root, shard, samples, storages)
    write_manifest(root, {
        "modalities": {m: storage_entry(storages[m], vocab_size=v, **{token_count_key(MODALITIES[m]): n})
                       for m, (v, n) in modalities.items()},
        "image_size": 32,
    })
    return str(root)


@pytest.fixture(scope="session")
def token_corpus(tmp_path_factory):
    return make_token_corpus(tmp_path_factory.mktemp("tokens"))
