import subprocess
import sys

HEAVY = ["transformers", "diffusers", "webdataset", "accelerate", "matplotlib", "sentence_transformers",
         "omegaconf", "skimage", "tokenizers", "vector_quantize_pytorch", "gradio"]


def test_import_fourm_is_cheap():
    code = f"import sys, fourm, fourm.modalities; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import fourm pulled in: {out}"


def test_python_dash_m_fourm_is_the_fourm_command():
    out = subprocess.run([sys.executable, "-m", "fourm", "modalities"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tok_rgb" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "fourm", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-command" in bad.stderr
