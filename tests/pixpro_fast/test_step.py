"""The training step as one function of device tensors (pixpro_fast.step): captured by
torch.compile as one graph with no break, fed new schedule values without recompiling, and
the same numbers as the eager step, for PixPro and a method of each kind."""
import pytest
import torch

from pixpro_fast.config import ConfigError, TrainConfig
from pixpro_fast.engine import Trainer
from pixpro_fast.step import TrainStep, compile_step, trace_backward, whole_step_problem
from pixpro_fast.training import build_training


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (see conftest's one_thread)."""


# one of each kind: the pixel method (LARS), an instance method with a momentum target
# (LARS), a ViT (AdamW), a pretext task (SGD); clip_grad_norm on for the ViT
KINDS = {
    "pixpro": dict(arch="resnet18", image_size=64),
    "byol": dict(arch="resnet18", image_size=64),
    "loca": dict(arch="vit_tiny_patch16", image_size=64, clip_grad_norm=3.0),
    "rotation": dict(arch="resnet18", image_size=64),
}


def _training(method, **extra):
    torch.manual_seed(0)
    cfg = TrainConfig(method=method, batch_size=4, loader="synthetic", precision="fp32", proj_hidden_dim=64,
                      device="cpu", epochs=2, scenes_images=16, warmup_epochs=1, **{**KINDS[method], **extra})
    return build_training(cfg)


def _batches(training, n):
    it = training.batches()
    return [next(it) for _ in range(n)]


def _run(step, batches, first=0):
    out = []
    for i, batch in enumerate(batches):
        step.set_schedules(first + i)
        out.append(step([batch]).detach().clone())
    return out


@pytest.mark.parametrize("method", list(KINDS))
def test_compiled_whole_step_is_one_graph_equal_to_the_eager_step(method, monkeypatch):
    """Three steps whose lr and momentum change (warmup, cosine): the whole step captured
    (aot_eager: the traced graph, run without code generation) gives the eager step's
    statistics and weights to float tolerance, as one graph (no break: a break would make
    two) compiled once (no recompilation for new schedule values); where this PyTorch cannot
    trace the backward, the backward is the one break (two graphs)."""
    from pixpro_fast import vit
    monkeypatch.setitem(vit.VIT_ARCHS, "vit_tiny_patch16", (192, 2, 3))   # 2 blocks: the same graph, shorter
    eager_t, whole_t = _training(method), _training(method)
    whole_t.method.load_state_dict(eager_t.method.state_dict())
    batches = _batches(eager_t, 3)
    eager = TrainStep(eager_t, clip_grad_norm=eager_t.cfg.clip_grad_norm)
    whole = TrainStep(whole_t, clip_grad_norm=whole_t.cfg.clip_grad_norm, whole=True)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    compiled = compile_step(whole, backend="aot_eager")
    whole.__call__ = compiled
    torch.manual_seed(1)
    expected = _run(eager, batches)
    torch.manual_seed(1)
    got = []
    for i, batch in enumerate(batches):
        whole.set_schedules(i)
        got.append(compiled([batch]).detach().clone())
    assert eager_t.lr_at(0) != eager_t.lr_at(2)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager_t.method.state_dict().items(), whole_t.method.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert counters["stats"]["unique_graphs"] == (1 if trace_backward() else 2), dict(counters["stats"])


def test_the_eager_step_is_the_engines_step(tmp_path):
    """Two engine runs, one through TrainStep's whole form run eagerly: the same weights
    (a tensor lr and momentum are the same computation as floats)."""
    cfg = TrainConfig(method="pixpro", batch_size=4, loader="synthetic", precision="fp32", proj_hidden_dim=64,
                      device="cpu", epochs=1, scenes_images=12, arch="resnet18", image_size=64, log_every=1,
                      ckpt_every=0, max_steps=3, out=str(tmp_path / "a"))
    a = Trainer(cfg)
    a.fit()
    b = Trainer(cfg.replace(out=str(tmp_path / "b")))
    b.train_step = TrainStep(b.training, whole=True)
    b._run_step = b.train_step
    b.fit()
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=name)


def test_settings_a_whole_step_cannot_capture_are_refused_by_name(tmp_path):
    assert whole_step_problem(1, 1, "bf16") is None
    assert "one process" in whole_step_problem(1, 2, "bf16")
    assert "micro-batch" in whole_step_problem(2, 1, "fp32")
    assert "fp16" in whole_step_problem(1, 1, "fp16")
    cfg = TrainConfig(method="pixpro", batch_size=4, loader="synthetic", precision="fp32", device="cpu", epochs=1,
                      scenes_images=12, arch="resnet18", image_size=64, accum_steps=2, compile_step=True,
                      out=str(tmp_path))
    with pytest.raises(ConfigError, match="compile_step.*accum_steps is 2"):
        Trainer(cfg)


def test_a_resumed_whole_step_run_equals_a_straight_one(tmp_path):
    """--compile-step (aot_eager here: the captured graph without code generation) stopped
    after 2 steps and resumed in a new trainer ends with the weights of a straight 4-step run:
    the loaded optimiser state is what the captured update reads."""
    import pixpro_fast.engine as engine
    cfg = TrainConfig(method="rotation", batch_size=4, loader="synthetic", precision="fp32", proj_hidden_dim=64,
                      device="cpu", epochs=1, scenes_images=16, arch="resnet18", image_size=32, log_every=1,
                      ckpt_every=2, compile_step=True, max_steps=4, out=str(tmp_path / "straight"))

    def compiled(step, mode="default"):
        return compile_step(step, mode, backend="aot_eager")
    orig = engine.compile_step
    engine.compile_step = compiled
    try:
        torch._dynamo.reset()
        straight = Trainer(cfg)
        straight.fit()
        cut = cfg.replace(out=str(tmp_path / "cut"), max_steps=2)
        Trainer(cut).fit()
        torch._dynamo.reset()
        resumed = Trainer(cut.replace(max_steps=4))
        resumed.fit()
    finally:
        engine.compile_step = orig
    assert straight.step == resumed.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
