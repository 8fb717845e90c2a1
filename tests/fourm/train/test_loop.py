"""The shared loop on a tiny regression task: it learns, checkpoints, and resumes exactly."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fourm.pretrained import PretrainedMixin, register_pretrained
from fourm.train.checkpoint import checkpoint_dirs, latest_checkpoint
from fourm.train.curves import read_metrics
from fourm.train.loop import TrainConfig, train


@dataclass
class TinyConfig:
    dim: int = 8


@register_pretrained("test_tiny_mlp")
class TinyMLP(nn.Module, PretrainedMixin):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.dim, 32), nn.GELU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class Crash(RuntimeError):
    pass


class RegressionTask:
    """y = sum(sin(x)); batches drawn from a generator seeded by the step, so any step can restart."""

    def __init__(self, crash_at: int | None = None):
        self.crash_at = crash_at
        self.calls = 0

    def build_model(self):
        return TinyMLP(TinyConfig())

    def _batch(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 8, generator=g)
        return x, torch.sin(x).sum(-1)

    def train_batches(self, start_step, rank, world_size):
        step = start_step
        while True:
            yield self._batch(step)
            step += 1

    def loss(self, model, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls > self.crash_at:
            raise Crash("simulated kill")
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y), {}

    def evaluate(self, model):
        x, y = self._batch(10_000)
        with torch.no_grad():  # the test also calls this outside the loop's no_grad
            return {"mse": float(nn.functional.mse_loss(model(x).float(), y))}


CFG = dict(steps=30, lr=3e-2, warmup_steps=3, eval_every=10, save_every=5, log_every=1, keep_last=2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_learns_and_writes_a_run_folder(tmp_path, precision):
    model = train(RegressionTask(), TrainConfig(**CFG, precision=precision), tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    evals = [r["eval/mse"] for r in rows if "eval/mse" in r]
    untrained = RegressionTask().evaluate(TinyMLP(TinyConfig()))["mse"]
    assert len(evals) == 3 and evals[-1] < 0.3 * untrained
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000025", "step-0000030"]
    reloaded = TinyMLP.from_pretrained(tmp_path / "model")
    x = torch.randn(4, 8)
    torch.testing.assert_close(reloaded(x), model.eval()(x))


def test_resume_after_a_crash_equals_an_unbroken_run(tmp_path):
    cfg = TrainConfig(**CFG, precision="fp32")
    unbroken = train(RegressionTask(), cfg, tmp_path / "a", progress=False)
    with pytest.raises(Crash):
        train(RegressionTask(crash_at=17), cfg, tmp_path / "b", progress=False)  # dies after step 17
    assert checkpoint_dirs(tmp_path / "b")[-1].name == "step-0000015"
    resumed = train(RegressionTask(), cfg, tmp_path / "b", progress=False)
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    curve = lambda run: [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl")  # noqa: E731
                         if "loss" in r]
    assert curve("a") == curve("b")
    # TensorBoard too: the steps the crashed run logged past its checkpoint are purged, not doubled
    assert board(tmp_path / "b", "loss") == board(tmp_path / "a", "loss") == curve("a")


def board(run, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar, as a reader that honours purges sees them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)]


def test_tensorboard_logs_every_numeric_field(tmp_path):
    train(RegressionTask(), TrainConfig(**{**CFG, "steps": 10}, precision="fp32"), tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert board(tmp_path, "grad_norm") == [(r["step"], r["grad_norm"]) for r in rows if "grad_norm" in r]
    assert board(tmp_path, "eval/mse") == [(r["step"], r["eval/mse"]) for r in rows if "eval/mse" in r]
    off = TrainConfig(**{**CFG, "steps": 10}, use_tensorboard=False)
    train(RegressionTask(), off, tmp_path / "off", progress=False)
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_an_unfinished_checkpoint_is_never_resumed_from(tmp_path):
    cfg = TrainConfig(**{**CFG, "steps": 10, "keep_last": 3}, precision="fp32")
    train(RegressionTask(), cfg, tmp_path, progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000005", "step-0000010"]
    # a kill inside save_checkpoint leaves a temporary folder, or (in a copy made by hand) a folder
    # without its state.json, which is written last: neither counts as a checkpoint
    (tmp_path / "checkpoints" / ".step-0000015.tmp-123" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000020" / "model").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "step-0000010"
    more = TrainConfig(**{**CFG, "steps": 25, "keep_last": 3}, precision="fp32")
    train(RegressionTask(), more, tmp_path, progress=False)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-0000015", "step-0000020", "step-0000025"]


def test_config_is_checked():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="parallel must be ddp or fsdp, not 'zero3'"):
        TrainConfig(parallel="zero3")


@pytest.mark.parametrize("bf16_time, chosen", [(0.1, "bf16"), (1.0, "fp32"), (5.0, "fp32")])
def test_auto_precision_is_decided_by_timing_not_by_cpu_flags(monkeypatch, bf16_time, chosen):
    """Three timed fp32 matmuls then three bf16 ones: bf16 only when clearly (1.25x) faster."""
    import itertools

    from fourm.model import precision

    steps = iter([1.0] * 3 + [bf16_time] * 3)
    clock = itertools.count()
    ticks = []

    def perf_counter():  # each run reads the clock twice: start, then start + that run's duration
        ticks.append(float(next(clock)))
        return ticks[-1] if len(ticks) % 2 else ticks[-2] + next(steps)

    monkeypatch.setattr(precision.time, "perf_counter", perf_counter)
    precision.fast_bf16.cache_clear()
    try:
        assert precision.resolve_precision("auto", torch.device("cpu")) == chosen
    finally:
        precision.fast_bf16.cache_clear()
    assert precision.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_a_sharded_checkpoint_is_not_resumed_by_a_replicated_run(tmp_path):
    from fourm.train.checkpoint import CheckpointMismatch

    cfg = TrainConfig(**{**CFG, "steps": 5}, precision="fp32")
    train(RegressionTask(), cfg, tmp_path, progress=False)
    (checkpoint_dirs(tmp_path)[-1] / "sharded").mkdir()  # what an fsdp run writes (its shards inside)
    with pytest.raises(CheckpointMismatch, match=r"written by a sharded \(fsdp\) run and this run is replicated"):
        train(RegressionTask(), TrainConfig(**{**CFG, "steps": 10}, precision="fp32"), tmp_path, progress=False)


@pytest.mark.parametrize("damage", ["empty weights", "cut optimizer", "state not JSON"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage, caplog):
    cfg = TrainConfig(**{**CFG, "steps": 10}, precision="fp32")
    unbroken = train(RegressionTask(), cfg, tmp_path / "a", progress=False)
    train(RegressionTask(), cfg, tmp_path / "b", progress=False)
    newest = checkpoint_dirs(tmp_path / "b")[-1]
    assert newest.name == "step-0000010"
    file = {"empty weights": "model/model.safetensors", "cut optimizer": "optim.pt",
            "state not JSON": "state.json"}[damage]
    data = (newest / file).read_bytes()
    (newest / file).write_bytes(b"" if damage == "empty weights" else data[: len(data) // 2])
    resumed = train(RegressionTask(), cfg, tmp_path / "b", progress=False)  # from step 5, again to 10
    assert "step-0000010 is damaged" in caplog.text
    for a, b in zip(unbroken.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resuming_another_model_is_refused_before_the_record_changes(tmp_path):
    from fourm.train.checkpoint import CheckpointMismatch

    @dataclass
    class Record:
        note: str

    cfg = TrainConfig(**{**CFG, "steps": 5}, precision="fp32")
    train(RegressionTask(), cfg, tmp_path, progress=False, record=Record("first"))
    record = (tmp_path / "config.yaml").read_text()
    wider = RegressionTask()
    wider.build_model = lambda: TinyMLP(TinyConfig(dim=16))
    with pytest.raises(CheckpointMismatch, match="dim 8 -> 16"):
        train(wider, TrainConfig(**{**CFG, "steps": 10}, precision="fp32"), tmp_path, progress=False,
              record=Record("second"))
    assert (tmp_path / "config.yaml").read_text() == record and "first" in record


def test_metrics_survive_a_half_written_row_and_name_a_damaged_one(tmp_path):
    from fourm.train.curves import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # killed mid-row
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    MetricsLog(path, keep_until=2).write({"step": 3, "loss": 1.0})  # a resume from step 2 appends after it
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl is damaged at line 2"):
        read_metrics(path)


def test_bf16_training_decides_attention_precision_for_its_evaluation_too(tmp_path, attention_timings):
    """Both decisions (training, and the no_grad evaluation) come before any step: taken inside a compiled
    block, the evaluation's timing broke the block's graph at every evaluation."""
    train(RegressionTask(), TrainConfig(**{**CFG, "steps": 2}, precision="bf16"), tmp_path, progress=False)
    assert sorted(attention_timings) == [(torch.bfloat16, False), (torch.bfloat16, True)]


@pytest.mark.slow
def test_a_compiled_model_is_evaluated_eager(tmp_path):
    """Under no_grad a compiled model compiles graphs of its own, which a few evaluation batches every
    eval_every steps do not pay back: the loop's evaluation runs the model eager, training compiled."""
    from torch._dynamo.utils import counters

    counters.clear()
    task = RegressionTask()
    train(task, TrainConfig(**{**CFG, "steps": 4, "eval_every": 2}, precision="fp32", use_compile=True), tmp_path,
          progress=False)
    assert counters["stats"]["unique_graphs"] <= 1  # the training forward's (none where a test before compiled it)
    evaluations = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/mse" in r]
    assert [r["step"] for r in evaluations] == [2, 4]


def test_compiling_on_a_cpu_without_a_compiler_is_one_clear_error(tmp_path, monkeypatch):
    from torch._inductor import cpp_builder, exc

    def no_compiler():
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(ValueError, match=r"use_compile on a CPU needs a C\+\+ compiler"):
        train(RegressionTask(), TrainConfig(**CFG, precision="fp32", use_compile=True), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()  # refused before the run began


def test_activation_checkpointing_of_a_model_that_names_nothing_to_recompute_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="use_activation_checkpointing: TinyMLP does not say what to recompute"):
        train(RegressionTask(), TrainConfig(**CFG, precision="fp32", use_activation_checkpointing=True), tmp_path,
              progress=False)
    assert not (tmp_path / "checkpoints").exists()
