import subprocess
import sys

HEAVY = ["transformers", "diffusers", "webdataset", "accelerate", "matplotlib", "sentence_transformers",
         "omegaconf", "skimage", "tokenizers", "vector_quantize_pytorch"]


def test_import_fourm_is_cheap():
    code = f"import sys, fourm, fourm.modalities; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import fourm pulled in: {out}"
