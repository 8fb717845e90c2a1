"""`fourm demo --quick` end to end (slow: about three minutes), and the stage table's caching."""

import html
import json
import subprocess
import sys

import pytest

from fourm.demo.stages import STAGES, load_demo_config, serve_command


def test_stages_run_in_the_documented_order():
    assert [s.name for s in STAGES] == ["corpus", "tokenizers", "tokenize", "train", "generate", "retrieve",
                                        "evaluate", "report"]


def test_quick_is_overrides_of_the_same_config():
    full, quick = load_demo_config(), load_demo_config(quick=True)
    assert quick.corpus.scenes < full.corpus.scenes and full.evaluate.samples is None  # all held-out scenes
    assert quick.evaluate.samples < full.corpus.heldout_scenes
    assert load_demo_config(overrides=["corpus.scenes=7"], quick=True).corpus.scenes == 7  # the user has the last word


def test_the_omni_preset_is_the_default_plus_what_it_adds():
    """configs/demo_omni.yaml extends demo.yaml: the default's settings, its series, tokenizers, modalities
    and chains on top; every chain names modalities the model trains on, every tokenizer config exists."""
    from pathlib import Path

    from fourm.demo.stages import TOKENIZER_CONFIGS, _fingerprint
    from fourm.modalities import get_modality

    default = load_demo_config()
    omni = load_demo_config(Path(__file__).parents[3] / "configs" / "demo_omni.yaml")
    assert omni.model.overrides == default.model.overrides and omni.corpus.scenes == default.corpus.scenes
    assert set(omni.corpus.series) == {"point_cloud", "imu", "video", "speech", "xray", "thermal", "hyperspectral",
                                       "scene_graph", "table"}
    assert set(default.model.modalities) < set(omni.model.modalities)
    assert set(default.tokenizers.configs) < set(omni.tokenizers.configs)  # the patch expert included
    assert all((TOKENIZER_CONFIGS / f"{n}.yaml").is_file() for n in omni.tokenizers.configs)
    assert all(m in omni.model.modalities for given, *targets in omni.chains.values() for m in [given, *targets])
    new = ("tok_point_cloud", "tok_imu", "tok_video", "tok_speech", "tok_xray", "tok_thermal", "tok_hyperspectral",
           "scene_graph", "table")
    assert all(get_modality(m).source in omni.corpus.series for m in new)
    corpus_settings = STAGES[0].settings
    assert "series" not in corpus_settings(default)  # runs from before series existed keep their corpus
    assert _fingerprint("", corpus_settings(omni)) != _fingerprint("", corpus_settings(default))


def test_fourm_is_trained_on_what_the_demo_trained_before_it(tmp_path):
    """The training stage's config points at this run's tokens, its patch expert and the tokenizers whose
    codebooks the heads read."""
    from fourm.demo.stages import train_config

    cfg = load_demo_config(overrides=["model.head_codebooks=[tok_rgb,tok_depth]"], out=str(tmp_path))
    train = train_config(cfg)
    assert train.data.corpora == [str(tmp_path / "tokens")] and train.out == str(tmp_path / "fourm")
    assert train.model.pixel_expert == str(tmp_path / "tokenizers" / "parts" / "patch_expert")
    assert train.model.head_codebooks == {n: str(tmp_path / "tokenizers" / n) for n in ("tok_rgb", "tok_depth")}


@pytest.mark.slow
def test_quick_demo_writes_the_report_with_the_table(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fourm.cli", "demo", "--quick", "--out", str(out)]
    subprocess.run(cmd, check=True, timeout=900)
    page = (out / "report.html").read_text()
    table = json.loads((out / "evaluation.json").read_text())
    assert table["rows"] and not table["skipped"]
    for row in table["rows"]:
        assert html.escape(row["task"]) in page and f"{row['model']:.3f}" in page
    assert page.count("data:image/png;base64,") >= 6
    again = subprocess.run(cmd, check=True, timeout=300, capture_output=True, text=True).stdout
    assert again.count("reused") == len(STAGES) - 1  # everything but the report comes from the cache
    assert (out / "index" / "index.json").is_file()  # the retrieval gallery, for fourm serve --index
    assert again.strip().splitlines()[-1].endswith(serve_command(load_demo_config(out=str(out))))


def test_the_serve_command_names_the_run_and_its_index_once_made(tmp_path):
    cfg = load_demo_config(out=str(tmp_path / "my run"))
    run = tmp_path / "my run"
    assert serve_command(cfg) == (f"fourm serve --model '{run}/fourm/model' --tokenizers '{run}/tokenizers' "
                                  f"--corpus '{run}/heldout'")  # quoted: a path with a space stays one argument
    (run / "index").mkdir(parents=True)
    (run / "index" / "index.json").write_text("{}")
    assert serve_command(cfg).endswith(f"--index '{run}/index'")


def test_the_demo_trains_compiled_where_it_can_and_eager_where_it_cannot(tmp_path, monkeypatch):
    """Compiling is how fast, not what: without a C++ compiler the demo trains eager instead of failing, and
    a run trained either way is the same stage (its fingerprint); so is one with another number of loader workers
    over the in-memory corpus."""
    from torch._inductor import cpp_builder, exc

    from fourm.demo import stages as demo

    trained = []
    monkeypatch.setattr(demo, "run_training", trained.append)
    cfg = load_demo_config(out=str(tmp_path))
    demo._train(cfg)

    def no_compiler():
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    demo._train(cfg)
    assert [t.train.use_compile for t in trained] == [True, False]
    eager = load_demo_config(out=str(tmp_path))
    eager.model.overrides = [*eager.model.overrides, "train.use_compile=false", "data.num_workers=2"]
    assert demo.train_config(eager).train.use_compile is False
    train_settings = STAGES[3].settings
    assert train_settings(cfg) == train_settings(eager)  # the loader's workers: the batches are the same
    streamed = load_demo_config(out=str(tmp_path))
    streamed.model.overrides = [*streamed.model.overrides, "data.loader=stream", "data.num_workers=2"]
    assert train_settings(streamed)["data"]["num_workers"] == 2  # a stream splits its shards over them


def test_finished_stages_are_reused_and_changed_ones_redone(tmp_path, monkeypatch):
    from fourm.demo import stages as demo

    calls = []

    def stage(name):
        def run(cfg):
            calls.append(name)
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "made").write_text(str(cfg.corpus.scenes))
            return {"scenes": cfg.corpus.scenes}
        return run

    def unavailable(cfg):
        calls.append("late")
        raise demo.StageUnavailable("not landed")

    monkeypatch.setattr(demo, "STAGES", [
        demo.Stage("a", stage("a"), lambda c: c.corpus.scenes, ("a",)),
        demo.Stage("b", stage("b"), lambda c: None, ("b",)),
        demo.Stage("late", unavailable, lambda c: None),
    ])
    cfg = load_demo_config(out=str(tmp_path), overrides=["corpus.scenes=5"])
    results = demo.run_demo(cfg)
    assert calls == ["a", "b", "late"] and results["late"] == {"skipped": "not landed"}
    demo.run_demo(cfg)
    assert calls == ["a", "b", "late", "late"]  # finished stages reused, the unavailable one retried
    demo.run_demo(load_demo_config(out=str(tmp_path), overrides=["corpus.scenes=6"]))
    assert calls[4:] == ["a", "b", "late"]  # a changed setting redoes its stage and every one after it
    assert (tmp_path / "b" / "made").read_text() == "6"


def test_report_names_what_is_missing(tmp_path):
    from fourm.demo.report import write_report

    (tmp_path / "evaluation.json").write_text(json.dumps({"samples": 3, "draws": 4, "skipped": {}, "rows": [
        {"task": "RGB -> depth", "metric": "abs rel", "model": 0.1, "baseline": 0.2, "upper": 0.05,
         "higher_is_better": False, "baseline_is": "mean depth map", "beats_baseline": True}]}))
    page = write_report(tmp_path).read_text()
    assert "RGB -&gt; depth" in page and "0.100" in page and "class='good'" in page
    assert "sampled 4 times per scene" in page
    assert "not produced (pictures/chain-caption.png)" in page


def test_report_shows_the_chains_a_config_adds(tmp_path):
    from PIL import Image

    from fourm.demo.report import write_report

    (tmp_path / "pictures").mkdir()
    for name in ("graph-to-rgb", "sample-1", "rgb-to-all"):
        Image.new("RGB", (4, 4)).save(tmp_path / "pictures" / f"{name}.png")
    page = write_report(tmp_path).read_text()
    assert "<h2>graph -&gt; rgb</h2>" in page and page.count("<img") == 2  # rgb-to-all in its own section


def test_report_lists_the_stages_it_is_given(tmp_path):
    from fourm.demo.report import write_report

    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "corpus.json").write_text(json.dumps({"fingerprint": "f", "seconds": 12.0, "summary": {}}))
    page = write_report(tmp_path, stages=[s.name for s in STAGES]).read_text()
    assert "<td>corpus</td><td>12 s</td>" in page and page.count("<td>not run</td>") == len(STAGES) - 1
