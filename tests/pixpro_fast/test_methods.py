import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pixpro_fast.config import TrainConfig
from pixpro_fast.loss import pixcontrast_loss
from pixpro_fast.methods import METHODS, build_method
from pixpro_fast.methods.mocov2 import moco_loss
from pixpro_fast.methods.simclr import nt_xent_loss
from pixpro_fast.methods.simsiam import simsiam_loss
from pixpro_fast.methods.swav import swapped_prediction_loss
from pixpro_fast.sinkhorn import sinkhorn
from reference import cell_centre
from sample_data import installed_backends

ROOT = Path(__file__).resolve().parents[2]


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_pixcontrast_matches_plain_loop():
    gen = torch.Generator().manual_seed(0)
    h, w = 4, 5
    o1, o2, t1, t2 = [torch.randn(3, 6, h, w, generator=gen, dtype=torch.float64) for _ in range(4)]
    c1 = torch.tensor([[0.1, 0.1, 0.7, 0.8], [0.0, 0.0, 1.0, 1.0], [0.9, 0.2, 0.3, 0.9]])
    c2 = torch.tensor([[0.3, 0.2, 0.9, 0.9], [0.2, 0.1, 0.6, 0.5], [0.1, 0.0, 0.8, 0.7]])
    pos_r, neg_r, tau = 0.7, 1.5, 0.3
    terms = []
    for q, k, cq, ck in ((o1, t2, c1, c2), (o2, t1, c2, c1)):
        for n in range(3):
            for i in range(h * w):
                xi, yi, di = cell_centre(cq[n], i // w, i % w, h, w)
                num, den, has = 0.0, 0.0, False
                for j in range(h * w):
                    xj, yj, dj = cell_centre(ck[n], j // w, j % w, h, w)
                    d = math.hypot(xi - xj, yi - yj) / max(di, dj)
                    e = math.exp(cos(q[n, :, i // w, i % w], k[n, :, j // w, j % w]) / tau)
                    if d < pos_r:
                        num += e
                        den += e
                        has = True
                    elif d >= neg_r:
                        den += e
                if has:
                    terms.append(-math.log(num / den))
    ours = pixcontrast_loss(o1.float(), o2.float(), t1.float(), t2.float(), c1, c2, pos_r, neg_r, tau)
    assert ours.item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    with pytest.raises(ValueError, match="neg_ratio"):
        pixcontrast_loss(o1, o2, t1, t2, c1, c2, 0.7, 0.5)


def test_nt_xent_matches_plain_loop():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    tau = 0.2
    allz = torch.cat([z1, z2])
    losses = []
    for a in range(10):
        pos = (a + 5) % 10
        num = math.exp(cos(allz[a], allz[pos]) / tau)
        den = sum(math.exp(cos(allz[a], allz[b]) / tau) for b in range(10) if b != a)
        losses.append(-math.log(num / den))
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(sum(losses) / 10, rel=1e-5)


def test_simsiam_loss_and_stop_gradient():
    gen = torch.Generator().manual_seed(2)
    p1, p2, z1, z2 = [torch.randn(4, 8, generator=gen, requires_grad=True) for _ in range(4)]
    ref = -0.5 * (sum(cos(p1[i].detach(), z2[i].detach()) for i in range(4)) / 4
                  + sum(cos(p2[i].detach(), z1[i].detach()) for i in range(4)) / 4)
    loss = simsiam_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None


def test_moco_loss_matches_plain_loop():
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    k = F.normalize(torch.randn(4, 8, generator=gen), dim=1)
    queue = F.normalize(torch.randn(8, 6, generator=gen), dim=0)
    tau = 0.2
    ref = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / tau) for j in range(6))
        ref += -math.log(pos / (pos + neg)) / 4
    assert moco_loss(q, k, queue, tau).item() == pytest.approx(ref, rel=1e-5)


def test_swapped_prediction_matches_plain_loop():
    gen = torch.Generator().manual_seed(5)
    s1, s2 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    q1, q2 = torch.softmax(torch.randn(3, 4, generator=gen), 1), torch.softmax(torch.randn(3, 4, generator=gen), 1)
    tau = 0.1
    ref = 0.0
    for i in range(3):
        ls2 = s2[i] / tau - torch.logsumexp(s2[i] / tau, 0)
        ls1 = s1[i] / tau - torch.logsumexp(s1[i] / tau, 0)
        ref += -0.5 * (float((q1[i] * ls2).sum()) + float((q2[i] * ls1).sum())) / 3
    assert swapped_prediction_loss(s1, s2, q1, q2, tau).item() == pytest.approx(ref, rel=1e-5)


def small_config(method):
    from pixpro_fast.config import method_fields
    own = {k: v for k, v in dict(queue_size=16, num_prototypes=10, swav_queue=8, swav_queue_start_epoch=0).items()
           if k in method_fields(method)}
    return TrainConfig.from_file(method).replace(arch="resnet18", image_size=64, proj_hidden_dim=64,
                                                 proj_dim=64 if method == "simsiam" else 32, **own)


@pytest.mark.parametrize("method", sorted(m for m, e in METHODS.items() if e.cls.num_views in (2, None)))
def test_one_step_changes_online_weights_only(method):
    torch.manual_seed(0)
    cfg = small_config(method)
    model = build_method(cfg)
    online_before = {k: v.clone() for k, v in model.online.state_dict().items()}
    target_before = {k: v.clone() for k, v in model.target.state_dict().items()}
    opt = torch.optim.SGD(model.online.parameters(), lr=0.5)
    v1, v2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    c1 = torch.tensor([[0.0, 0.0, 0.8, 0.8]] * 4)
    c2 = torch.tensor([[0.2, 0.2, 1.0, 1.0]] * 4)
    for _ in range(2):      # the second step sees a full SwAV queue
        out = model((v1, v2), (c1, c2))
        assert torch.isfinite(out.loss)
        assert out.stats and all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
        # statistics are real for the method: instance-level objectives have no pixel pairs
        assert ("positive_pairs" in out.stats) == method.startswith("pix")
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in model.target.parameters())
        opt.step()
    changed = [k for k, v in model.online.state_dict().items() if not torch.equal(v, online_before[k])]
    assert any(k.startswith("encoder.") and k.endswith("weight") for k in changed)
    target_params = {n for n, _ in model.target.named_parameters()}
    assert all(torch.equal(v, target_before[k]) for k, v in model.target.state_dict().items() if k in target_params)
    if len(model.target):
        model.update_target(0.5)
        assert any(not torch.equal(p, target_before[n]) for n, p in model.target.named_parameters())


def test_moco_queue_wraps_and_swav_prototypes_stay_normalised():
    moco = build_method(small_config("mocov2"))
    keys = F.normalize(torch.randn(8, 32), dim=1)
    moco.enqueue(keys)
    moco.enqueue(keys * -1)
    assert int(moco.queue_ptr) == 0                      # 16 slots, two batches of 8: wrapped
    torch.testing.assert_close(moco.queue.t()[8:], keys * -1)
    moco.enqueue(keys * 0.5)                              # the oldest keys go first
    torch.testing.assert_close(moco.queue.t()[:8], keys * 0.5)
    torch.testing.assert_close(moco.queue.t()[8:], keys * -1)
    swav = build_method(small_config("swav"))
    with torch.no_grad():
        swav.online["prototypes"].weight.mul_(3.0)
    swav.after_optimizer_step()
    torch.testing.assert_close(swav.online["prototypes"].weight.norm(dim=1), torch.ones(10))


def test_swav_queue_is_neither_filled_nor_used_before_its_start_epoch(monkeypatch):
    """As the reference (epoch_queue_starts): before the start epoch the codes come from the
    batch alone and the queue stays empty; from it each step pushes the batch in, and once
    the queue is full (here 8 = two batches of 4) the codes are balanced over queue + batch."""
    import pixpro_fast.methods.swav as swav_module
    rows = []
    real = swav_module.sinkhorn
    monkeypatch.setattr(swav_module, "sinkhorn", lambda x, **kw: rows.append(x.shape[0]) or real(x, **kw))
    torch.manual_seed(0)
    model = build_method(small_config("swav").replace(swav_queue_start_epoch=2))
    views = (torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    with torch.no_grad():
        model(views)                                  # no set_epoch yet: epoch 0
        model.set_epoch(1)
        model(views)
        assert rows == [4, 4, 4, 4] and int(model.queue_fill) == 0 and not model.queue.any()
        model.set_epoch(2)
        rows.clear()
        model(views)
        assert int(model.queue_fill) == 4 and model.queue[:, :4].any(dim=2).all() and not model.queue[:, 4:].any()
        model(views)                                  # the queue fills up, still unused
        model(views)                                  # full: 8 queued rows + the batch
        assert rows == [4, 4, 4, 4, 12, 12]


def test_swav_queue_start_follows_the_engine_epoch_through_a_resume(tmp_path):
    """One step an epoch, queue from epoch 1: a run stopped after epoch 0 has an empty queue;
    resumed, epoch 1 pushes its batch of 4."""
    from pipelines import build_loader
    from pixpro_fast.checkpoint import list_checkpoints, load_checkpoint
    from pixpro_fast.engine import Trainer
    cfg = small_config("swav").replace(swav_queue_start_epoch=1, image_size=32, batch_size=4, epochs=2, num_workers=0,
                                       loader="synthetic", tensorboard=False, warmup_epochs=0.0, precision="fp32",
                                       device="cpu", freeze_prototypes_steps=0, out=str(tmp_path))

    def run(max_steps):
        loader = build_loader("synthetic", None, 4, 32, cfg.recipe, batches_per_epoch=1, seed=0)
        return Trainer(cfg.replace(max_steps=max_steps), loader=loader).fit()
    assert run(1).steps == 1
    assert int(load_checkpoint(list_checkpoints(tmp_path)[-1])["model"]["queue_fill"]) == 0
    assert run(None).steps == 2
    assert int(load_checkpoint(list_checkpoints(tmp_path)[-1])["model"]["queue_fill"]) == 4


def test_a_swav_checkpoint_from_before_the_queue_start_epoch_resumes_only_as_it_ran():
    """Before swav_queue_start_epoch existed a queue ran from step 0: such a checkpoint is
    refused under the default start (15) and resumes with 0; other checkpoints are unaffected."""
    from pixpro_fast.config import resume_differences
    swav = small_config("swav")
    old = {k: v for k, v in swav.to_dict().items() if k != "swav_queue_start_epoch"}
    assert resume_differences(old, swav) == []                             # small_config starts it at 0
    assert resume_differences(old, swav.replace(swav_queue_start_epoch=15)) == [
        "swav_queue_start_epoch: checkpoint has 0, config has 15"]
    no_queue = dict(old, swav_queue=0)
    assert resume_differences(no_queue, swav.replace(swav_queue=0, swav_queue_start_epoch=15)) == []
    byol = small_config("byol")
    assert resume_differences({k: v for k, v in byol.to_dict().items() if k != "swav_queue_start_epoch"}, byol) == []


@pytest.mark.parametrize("method,has_target", [("simclr", False), ("byol", True)])
def test_momentum_is_logged_only_for_methods_with_a_momentum_target(method, has_target, tmp_path):
    """What the engine writes per log interval: SimCLR has no momentum target, so no momentum."""
    from pipelines import build_loader
    from pixpro_fast.engine import Trainer
    cfg = small_config(method).replace(image_size=32, batch_size=4, epochs=1, num_workers=0, loader="synthetic",
                                       tensorboard=False, precision="fp32", device="cpu", out=str(tmp_path))
    trainer = Trainer(cfg, loader=build_loader("synthetic", None, 4, 32, cfg.recipe, batches_per_epoch=2, seed=0))
    assert (len(trainer.model.target) > 0) == has_target
    logged = []

    class Logger:
        def log(self, step, values):
            logged.append(values)
    trainer._stat_names = ("loss", "positive_cosine")
    from pixpro_fast.metrics import LogWindow
    window = LogWindow()
    window.add(torch.tensor([1.0, 0.5]), images=4, skipped=0, waited=0.0)
    trainer._log(Logger(), window, 0.1)
    assert window.steps == 0 and window.last_loss == 1.0 and window.run_images == 4
    assert logged[0]["lr"] == 0.1 and logged[0]["loss"] == 1.0
    assert ("momentum" in logged[0]) == has_target
    if has_target:
        assert logged[0]["momentum"] == trainer.training.momentum_at(0)


def test_method_presets_load_and_unknown_method_is_named():
    for m in METHODS:
        assert TrainConfig.from_file(m).method == m
    with pytest.raises(ValueError, match="method must be one of"):
        TrainConfig(method="dino").validate()
    with pytest.raises(ValueError, match="pixcontrast_weight"):
        TrainConfig(method="pixcontrast", pixcontrast_weight=0.0).validate()


GATHER_WORKER = r'''
import os, sys, torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from pixpro_fast.methods.simclr import nt_xent_loss
from pixpro_fast.pair_losses import PAIR_LOSSES, pair_loss
from pixpro_fast.sinkhorn import sinkhorn
from pixpro_fast.methods.mocov2 import MoCoV2
from pixpro_fast.config import TrainConfig
dist.init_process_group("gloo")
rank = dist.get_rank()
gen = torch.Generator().manual_seed(7)
z1, z2, scores = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen), torch.randn(8, 5, generator=gen)
mine = slice(rank * 4, rank * 4 + 4)
a, b = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
loss = nt_xent_loss(a, b, 0.2)
loss.backward()
pairs = {}
for name in PAIR_LOSSES[1:]:
    a2, b2 = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
    l2 = pair_loss(name, a2, b2, 0.2, 0.7)
    l2.backward()
    pairs[name] = {"loss": l2.detach(), "grad_a": a2.grad, "grad_b": b2.grad}
codes = sinkhorn(scores[mine], iters=3, eps=0.05)
torch.manual_seed(0)
moco = MoCoV2(TrainConfig(method="mocov2", arch="resnet18", proj_hidden_dim=32, proj_dim=16, queue_size=16))
moco.enqueue(z1[mine])
torch.save({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad, "codes": codes, "queue": moco.queue,
            "pairs": pairs},
           os.path.join(sys.argv[1], f"rank{rank}.pt"))
dist.destroy_process_group()
'''


def test_gathering_methods_across_two_ranks_equal_single_process_on_concatenated_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(GATHER_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", str(script), str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    gen = torch.Generator().manual_seed(7)
    z1, z2, scores = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen), torch.randn(8, 5, generator=gen)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    full = nt_xent_loss(a, b, 0.2)
    full.backward()
    # the mean over ranks of the per-rank losses is the single-process loss
    assert ((r[0]["loss"] + r[1]["loss"]) / 2).item() == pytest.approx(full.item(), rel=1e-5)
    # DDP averages gradients over ranks: (sum of each rank's gradient) / 2 == full-batch gradient
    torch.testing.assert_close(torch.cat([r[0]["grad_a"], r[1]["grad_a"]]) / 2, a.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.cat([r[0]["grad_b"], r[1]["grad_b"]]) / 2, b.grad, atol=1e-6, rtol=1e-4)
    # the other pair losses (contrastive, triplets, N-pair): the same, each a mean over anchors
    from pixpro_fast.pair_losses import PAIR_LOSSES, pair_loss
    for name in PAIR_LOSSES[1:]:
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        full = pair_loss(name, a, b, 0.2, 0.7)
        full.backward()
        mine = [r[i]["pairs"][name] for i in (0, 1)]
        assert ((mine[0]["loss"] + mine[1]["loss"]) / 2).item() == pytest.approx(full.item(), rel=1e-5), name
        torch.testing.assert_close(torch.cat([mine[0]["grad_a"], mine[1]["grad_a"]]) / 2, a.grad, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(torch.cat([mine[0]["grad_b"], mine[1]["grad_b"]]) / 2, b.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.cat([r[0]["codes"], r[1]["codes"]]), sinkhorn(scores, iters=3, eps=0.05),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r[0]["queue"], r[1]["queue"])
    torch.testing.assert_close(r[0]["queue"][:, :8].t(), z1)


def test_method_flag_trains_from_the_command_line(tmp_path):
    args = ["--method", "mocov2", "--loader", "synthetic", "--arch", "resnet18", "--image-size", "64",
            "--batch-size", "4", "--proj-hidden-dim", "32", "--proj-dim", "16", "--queue-size", "16", "--max-steps", "2",
            "--no-tensorboard", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pixpro_fast: mocov2" in proc.stderr          # the bundled MoCo v2 defaults were loaded
    from pixpro_fast.checkpoint import list_checkpoints, load_checkpoint
    state = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert state["config"]["optimizer"] == "sgd" and state["config"]["ema_schedule"] == "constant"
    assert "queue" in state["model"]


def test_swav_multicrop_loss_equals_a_plain_reference_on_the_same_views():
    """Eight views of two sizes: codes from the two large views, every other view predicts
    them; written per sample from the formula against the module's batched loss."""
    from pixpro_fast.methods.swav import multicrop_swapped_loss
    from pixpro_fast.sinkhorn import sinkhorn
    torch.manual_seed(0)
    cfg = small_config("swav").replace(swav_queue=0)
    model = build_method(cfg)
    views = [torch.randn(3, 3, 64, 64) for _ in range(2)] + [torch.randn(3, 3, 32, 32) for _ in range(6)]
    out = model(views, None)
    on, ref_terms = model.online, []
    with torch.no_grad():
        z = model._embed(views)        # same-size views pass the encoder together, as in the module
        assert [zi.shape for zi in z] == [(3, cfg.proj_dim)] * 8
        s = [on["prototypes"](zi) for zi in z]
        for a in range(2):
            q = sinkhorn(s[a], iters=cfg.sinkhorn_iters, eps=cfg.sinkhorn_eps)
            per_view = []
            for v in range(8):
                if v == a:
                    continue
                per_sample = [-(q[i] * torch.log_softmax(s[v][i] / cfg.temperature, dim=0)).sum() for i in range(3)]
                per_view.append(sum(per_sample) / 3)
            ref_terms.append(sum(per_view) / 7)
    assert float(sum(ref_terms) / 2) == pytest.approx(float(out.loss.detach()), rel=1e-5)
    two = multicrop_swapped_loss(s[:2], [sinkhorn(s[0], iters=3, eps=0.05), sinkhorn(s[1], iters=3, eps=0.05)], 0.1)
    q0, q1 = sinkhorn(s[0], iters=3, eps=0.05), sinkhorn(s[1], iters=3, eps=0.05)
    assert float(two) == pytest.approx(float(swapped_prediction_loss(s[0], s[1], q0, q1, 0.1)), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 views"):
        model(views[:1], None)


@pytest.mark.parametrize("flags, words", [
    (["--method", "rotation", "--recipe", "byol"], ["--recipe", "'byol' has 2 view(s)", "'rotation' needs 1"]),
    (["--method", "loca", "--arch", "resnet50"], ["--arch", "ViT encoder"]),
    (["--method", "pixpro", "--arch", "vit_tiny_patch16"], ["--arch", "ResNet encoder"]),
    (["--method", "loca", "--recipe", "byol"], ["--recipe", "'loca' needs 11"]),
])
def test_a_method_given_the_wrong_views_or_encoder_fails_before_training(flags, words, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags, "--loader", "synthetic", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert all(w in proc.stderr for w in words), proc.stderr


@pytest.mark.parametrize("method, extra", [
    ("loca", dict(arch="vit_tiny_patch16", num_prototypes=32)),
    ("rotation", dict(arch="resnet18")),
    ("swav", dict(arch="resnet18", recipe="swav_multicrop", num_prototypes=16)),
])
def test_n_view_and_one_view_methods_train_on_the_scenes(method, extra, tmp_path):
    from pixpro_fast.engine import Trainer
    cfg = TrainConfig.from_file(method).replace(image_size=64, batch_size=4, max_steps=2, proj_hidden_dim=32,
                                                proj_dim=16, num_workers=0, scenes_images=16, tensorboard=False,
                                                precision="fp32", out=str(tmp_path), **extra)
    res = Trainer(cfg).fit()
    assert res.steps == 2 and res.status == "max_steps"
    import json
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize("backend", installed_backends())
def test_swav_multicrop_trains_on_every_backend(backend, tmp_path):
    """Eight views of two sizes from each loader, through the engine, for two steps."""
    from pipelines.scenes import ensure_scenes

    from pixpro_fast.engine import Trainer
    data = ensure_scenes(n_images=16, seed=0)
    if backend == "ffcv":
        from pipelines.ffcv_writer import write_beton
        write_beton(data, tmp_path / "scenes.beton", num_workers=1, progress=False)
        data = tmp_path / "scenes.beton"
    cfg = TrainConfig.from_file("swav").replace(arch="resnet18", recipe="swav_multicrop", num_prototypes=16,
                                               image_size=64, batch_size=4, max_steps=2, proj_hidden_dim=32,
                                               proj_dim=16, num_workers=1, data=str(data), loader=backend,
                                               tensorboard=False, precision="fp32", out=str(tmp_path / "run"))
    from pipelines import get_recipe
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    small = get_recipe("swav_multicrop").output_sizes(64)[-1]
    assert [tuple(v.shape[1:]) for v in batch.views] == [(3, 64, 64)] * 2 + [(3, small, small)] * 6
    res = trainer.fit()
    assert res.steps == 2 and res.status == "max_steps"
    import json
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    assert records and all(math.isfinite(r["loss"]) for r in records)


def test_a_setting_of_another_method_is_refused_naming_it():
    from pixpro_fast.config import ConfigError, method_fields
    assert "queue_size" in method_fields("mocov2") and "queue_size" not in method_fields("byol")
    assert {"ppm_gamma", "pos_ratio", "temperature"} <= set(method_fields("pixcontrast"))
    with pytest.raises(ConfigError, match="queue_size 16 is a setting of mocov2 only; method 'byol'"):
        TrainConfig.from_file("byol").replace(queue_size=16)
    TrainConfig.from_file("byol").replace(queue_size=TrainConfig().queue_size)  # the default is no setting
    TrainConfig.from_file("mocov2").replace(queue_size=16)
