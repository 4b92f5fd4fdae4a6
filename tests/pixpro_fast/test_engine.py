import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from pixpro_fast.checkpoint import list_checkpoints, load_checkpoint
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import NonFiniteLossError, ResumeMismatchError, Trainer
from pixpro_fast.export import detectron2_key, encoder_state_from_checkpoint, export_checkpoint
from sample_data import jpeg_folder

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(arch="resnet18", image_size=64, proj_hidden_dim=64, proj_dim=32, batch_size=4, num_workers=0,
            tensorboard=False, log_every=1, warmup_epochs=0.0, seed=3)


def image_folder(root: Path, n: int = 12) -> Path:
    return jpeg_folder(root, n, first=(80, 120), step=(7, -3))


def run_cli(*args, timeout=300, **kw):
    # the CLI runs on this process's intra-op thread count: fp32 results depend on it
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def cli_flags(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            out += [flag, str(v)]
    return out


def test_resume_in_fresh_process_equals_straight_run(tmp_path):
    data = image_folder(tmp_path / "data")       # 12 images, batch 4: 3 steps per epoch
    common = dict(TINY, data=str(data), epochs=2, precision="fp32", ckpt_every=0)
    straight = Trainer(TrainConfig(**common, out=str(tmp_path / "a"))).fit()
    assert straight.steps == 6 and straight.status == "finished"
    half = Trainer(TrainConfig(**common, out=str(tmp_path / "b"), max_steps=2)).fit()   # stops mid-epoch
    assert half.steps == 2 and half.status == "max_steps"
    proc = run_cli(*cli_flags(dict(common, out=str(tmp_path / "b"))))
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stderr
    a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert a["step"] == b["step"] == 6
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=1e-6, rtol=0, msg=k)
    # the run learned something: the online encoder moved away from its initial weights
    fresh = Trainer(TrainConfig(**common, out=str(tmp_path / "c"))).model.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in a["model"].items() if k.startswith("online.encoder"))


def test_resume_with_mismatched_config_names_the_difference(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path)))
    Trainer(cfg, loader=_synthetic(cfg)).fit()
    changed = cfg.replace(batch_size=2)
    with pytest.raises(ResumeMismatchError, match="batch_size: checkpoint has 4, config has 2"):
        Trainer(changed, loader=_synthetic(changed)).fit()
    assert list_checkpoints(tmp_path)  # nothing was lost


def _synthetic(cfg, batches=3):
    from pipelines import build_loader
    return build_loader("synthetic", None, cfg.batch_size, cfg.image_size, batches_per_epoch=batches, seed=cfg.seed)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path), base_lr=1e30, ckpt_every=1))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is .*ckpt_"):
        Trainer(cfg, loader=_synthetic(cfg, batches=6)).fit()
    ckpts = list_checkpoints(tmp_path)
    assert ckpts
    state = load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_gradient_accumulation_counts_micro_batches_per_step(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path), accum_steps=2))
    tr = Trainer(cfg, loader=_synthetic(cfg, batches=5))
    assert tr.steps_per_epoch == 2 and tr.global_batch == 8
    res = tr.fit()
    assert res.steps == 2


def test_on_step_gets_every_step_with_its_time(tmp_path):
    seen = []
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path)))
    tr = Trainer(cfg, loader=_synthetic(cfg, batches=3), on_step=lambda step, seconds: seen.append((step, seconds)))
    tr.fit()
    assert [step for step, _ in seen] == [1, 2, 3]
    assert all(0 < seconds < 60 for _, seconds in seen)


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = cli_flags(dict(TINY, loader="synthetic", epochs=1000, out=str(out), ckpt_every=0))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: saved" in stderr
    ckpt = load_checkpoint(list_checkpoints(out)[-1])
    assert ckpt["step"] >= 2


def test_export_round_trip_into_torchvision(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path / "run")))
    res = Trainer(cfg, loader=_synthetic(cfg, batches=2)).fit()
    proc = run_cli("export", "--checkpoint", str(res.checkpoint), "--out", str(tmp_path / "export"))
    assert proc.returncode == 0, proc.stderr
    state = torch.load(tmp_path / "export" / "encoder_torchvision.pth", weights_only=True)
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    trained = encoder_state_from_checkpoint(load_checkpoint(res.checkpoint))
    for k, v in trained.items():
        assert torch.equal(net.state_dict()[k], v)
    import pickle
    with open(tmp_path / "export" / "encoder_detectron2.pkl", "rb") as f:
        d2 = pickle.load(f)["model"]
    assert "stem.conv1.weight" in d2 and "res5.1.conv2.norm.running_var" in d2
    d2_cfg = json.loads((tmp_path / "export" / "encoder_info.json").read_text())["detectron2_config"]
    assert d2_cfg["MODEL.RESNETS.DEPTH"] == 18 and d2_cfg["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert d2_cfg["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 64 and d2_cfg["INPUT.FORMAT"] == "RGB"
    assert d2_cfg["MODEL.PIXEL_MEAN"] == pytest.approx([123.675, 116.28, 103.53])
    assert d2_cfg["MODEL.PIXEL_STD"] == pytest.approx([58.395, 57.12, 57.375])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_detectron2_mapping_covers_every_backbone_tensor(arch):
    state = {k: v for k, v in getattr(torchvision.models, arch)().state_dict().items() if not k.startswith("fc.")}
    mapped = {k: detectron2_key(k) for k in state}
    kept = {k: v for k, v in mapped.items() if v is not None}
    assert all(k.endswith("num_batches_tracked") for k, v in mapped.items() if v is None)
    assert len(set(kept.values())) == len(kept)      # one-to-one
    import re
    pattern = re.compile(r"^(stem\.conv1(\.norm)?|res[2-5]\.\d+\.(conv[1-3](\.norm)?|shortcut(\.norm)?))\."
                         r"(weight|bias|running_mean|running_var)$")
    assert all(pattern.match(v) for v in kept.values()), [v for v in kept.values() if not pattern.match(v)]
    if arch == "resnet50":
        assert mapped["layer1.0.downsample.0.weight"] == "res2.0.shortcut.weight"
        assert mapped["layer4.2.bn3.running_mean"] == "res5.2.conv3.norm.running_mean"
        assert mapped["bn1.weight"] == "stem.conv1.norm.weight"


def test_export_of_foreign_file_is_a_clear_error(tmp_path):
    torch.save({"model": {"something": torch.zeros(1)}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no online encoder"):
        export_checkpoint(tmp_path / "x.pt", tmp_path / "out")


def test_export_of_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from pixpro_fast.cli import main as cli_main
    """Missing, truncated and foreign checkpoints, one that does not record its arch and an
    --out that is a file: exit status 2, one line naming the problem, no file written."""
    enc = torchvision.models.resnet18()
    encoder = {f"online.encoder.{k}": v for k, v in enc.state_dict().items() if not k.startswith("fc.")}
    good = tmp_path / "good.pt"
    torch.save({"model": encoder, "config": {"arch": "resnet18", "method": "pixpro"}}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:4096])
    torch.save({"model": encoder}, tmp_path / "no_arch.pt")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "foreign.pt")
    (tmp_path / "a_file").write_text("x")
    cases = [("missing.pt", "out", "checkpoint not found"), ("truncated.pt", "out", "cannot read checkpoint"),
             ("no_arch.pt", "out", "does not record a known encoder arch"),
             ("foreign.pt", "out", "holds no online encoder"), ("good.pt", "a_file", "is a file, not a folder")]
    for ckpt, out, message in cases:
        code = cli_main(["export", "--checkpoint", str(tmp_path / ckpt), "--out", str(tmp_path / out)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and message in err, (ckpt, err)
        assert err.strip().count("\n") == 0, err
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "a_file").read_text() == "x"
    assert cli_main(["export", "--checkpoint", str(good), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "encoder.safetensors", "encoder_detectron2.pkl", "encoder_info.json", "encoder_torchvision.pth"]


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"'batchsize' \(did you mean 'batch_size'\?\)"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        TrainConfig.from_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(image_size=100).validate()
    proc = run_cli("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--arch", "resnet18")
    assert proc.returncode != 0 and "missing" in proc.stderr
    assert not (tmp_path / "o").exists() or not list_checkpoints(tmp_path / "o")


def test_corrupt_jpeg_does_not_stop_training(tmp_path):
    data = image_folder(tmp_path / "data", n=8)
    good = (data / "img_00.jpg").read_bytes()
    (data / "img_99.jpg").write_bytes(good[: len(good) // 3])       # truncated
    cfg = TrainConfig(**dict(TINY, data=str(data), epochs=1, out=str(tmp_path / "run")))
    res = Trainer(cfg).fit()
    assert res.status == "finished" and res.steps == 2
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    assert sum(r["skipped_images"] for r in records) >= 1


def test_first_progress_line_after_step_one_records_nothing_extra(tmp_path):
    data = image_folder(tmp_path / "data", n=12)                 # batch 4: 3 steps
    log = io.StringIO()
    cfg = TrainConfig(**dict(TINY, data=str(data), epochs=1, log_every=100, out=str(tmp_path / "run")))
    res = Trainer(cfg, log_stream=log).fit()
    lines = [line for line in log.getvalue().splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "3/3"]
    records = [json.loads(line) for line in res.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records] == [3]                    # the first line is shown, not recorded


def test_progress_line_counts_skipped_and_warning_names_the_file(tmp_path, caplog):
    data = image_folder(tmp_path / "data", n=8)
    (data / "img_99.jpg").write_bytes(b"not a jpeg at all" * 10)
    log = io.StringIO()
    cfg = TrainConfig(**dict(TINY, data=str(data), epochs=1, log_every=100, out=str(tmp_path / "run")))
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        Trainer(cfg, log_stream=log).fit()
    lines = [line for line in log.getvalue().splitlines() if line.startswith("step ")]
    assert "skipped 1 unreadable" in lines[-1]
    warned = [r.getMessage() for r in caplog.records if "img_99.jpg" in r.getMessage()]
    assert len(warned) == 1 and "not an image PIL can identify" in warned[0] and "<_io" not in warned[0]


def test_profile_writes_trace_and_prints_top_ops(tmp_path):
    proc = run_cli(*cli_flags(dict(TINY, loader="synthetic", epochs=50, out=str(tmp_path), profile=2)))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "profile_trace.json").stat().st_size > 1000
    assert "Self CPU" in proc.stderr and "too few steps to judge loader- or compute-bound" in proc.stderr


DDP_WORKER = r'''
import os, sys, torch
sys.path.insert(0, sys.argv[2])
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer
from pipelines import build_loader
cfg = TrainConfig(arch="resnet18", image_size=64, proj_hidden_dim=64, proj_dim=32, batch_size=4, epochs=1,
                  loader="synthetic", tensorboard=False, out=sys.argv[1], device="cpu", warmup_epochs=0.0)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
loader = build_loader("synthetic", None, 4, 64, batches_per_epoch=3, seed=rank, rank=rank, world_size=world)
tr = Trainer(cfg, loader=loader)
tr.fit()
torch.save({"params": [p.detach().clone() for p in tr.model.online.parameters()],
            "target": [p.detach().clone() for p in tr.model.target.parameters()],
            "bn": [b.clone() for n, b in tr.model.named_buffers() if n.endswith(("running_mean", "running_var"))],
            "coords": next(iter(loader)).coords1}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
'''


def test_ddp_two_cpu_processes_keep_identical_parameters(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", str(script), str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["coords"], r1["coords"])       # the ranks saw different data
    for a, b in zip(r0["params"] + r0["target"], r1["params"] + r1["target"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # each rank's BatchNorm statistics followed its own batches; saving averaged them over the ranks
    assert r0["bn"] and all(torch.equal(a, b) for a, b in zip(r0["bn"], r1["bn"]))


def test_short_lars_schedule_is_flagged(tmp_path):
    """The paper's trust coefficient over a handful of steps cannot move the weights: the run
    says so; a larger coefficient or plain SGD does not trigger the note."""
    base = dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path))
    note = Trainer(TrainConfig(**base)).short_schedule_note()
    assert note is not None and "lars_trust=0.001" in note and "--lars-trust" in note
    assert Trainer(TrainConfig(**dict(base, lars_trust=1000.0))).short_schedule_note() is None
    assert Trainer(TrainConfig(**dict(base, optimizer="sgd"))).short_schedule_note() is None


def test_config_values_a_run_cannot_use_are_refused_by_name(tmp_path):
    assert TrainConfig.from_file("quickstart.json") == TrainConfig.from_file("quickstart")
    for text, kind in (("[]", "list"), ('["arch"]', "list"), ("null", "NoneType"), ("3", "int")):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(ValueError, match=f"must hold a JSON object .* not a {kind}"):
            TrainConfig.from_file(tmp_path / "c.json")
    (tmp_path / "a_file").write_text("x")
    for changes, message in ((dict(base_lr=float("nan")), "base_lr must be a finite number, got nan"),
                             (dict(ema_momentum=float("nan")), "ema_momentum must be a finite number"),
                             (dict(warmup_epochs=float("inf")), "warmup_epochs must be a finite number, got inf"),
                             (dict(seed=10 ** 30), "seed is out of range"),
                             (dict(out=""), "out must name the output folder"),
                             (dict(out=str(tmp_path / "a_file")), "is a file, not a folder")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes).validate()


def test_unreadable_encoder_weights_or_an_out_that_is_a_file_end_before_training(tmp_path, capsys):
    from pixpro_fast.cli import main as cli_main
    (tmp_path / "random.pth").write_bytes(os.urandom(256))
    (tmp_path / "a_file").write_text("x")
    common = ["--loader", "synthetic", "--arch", "resnet18", "--image-size", "64", "--batch-size", "2",
              "--max-steps", "1"]
    for extra, message in ((["--encoder-weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")],
                            "encoder weights file not found"),
                           (["--encoder-weights", str(tmp_path / "random.pth"), "--out", str(tmp_path / "o")],
                            "cannot read encoder weights"),
                           (["--out", str(tmp_path / "a_file")], "is a file, not a folder")):
        with pytest.raises(SystemExit) as stop:
            cli_main(common + extra)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].count(message) == 1
    assert not (tmp_path / "o").exists() and (tmp_path / "a_file").read_text() == "x"


def test_the_loader_workers_live_through_the_epochs_of_a_run(tmp_path, monkeypatch):
    """The engine takes each epoch's batches by count and then drops the pass's iterator. That
    finishes the pass: the torch loader's persistent workers read on into the next epoch
    instead of being stopped and forked again at every epoch's start (a fork that also turns
    the training process's memory copy-on-write for the steps after it)."""
    data = image_folder(tmp_path / "data", n=8)   # batch 4: 2 steps per epoch
    cfg = TrainConfig(**{**TINY, "num_workers": 1}, data=str(data), loader="torch", epochs=3, precision="fp32",
                      ckpt_every=0, out=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    starts, stops = [], []
    real_iter, close = torch.utils.data.DataLoader.__iter__, trainer.loader.close
    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__",
                        lambda self: (starts.append(trainer.step), real_iter(self))[1])
    monkeypatch.setattr(trainer.loader, "close", lambda: (stops.append(trainer.step), close())[1])
    res = trainer.fit()
    assert res.steps == 6 and res.status == "finished"
    assert starts == [0] and stops == []      # one stream of batches, started once, never stopped


def test_sync_bn_on_cpu_processes_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Several processes on CPUs cannot run SyncBatchNorm: --sync-bn there ends with one line
    naming the flag and exit status 2, before any process group, data or model. A single
    process has nothing to synchronise and runs with it on any device."""
    import torch.distributed as dist
    from pixpro_fast.cli import main as cli_main
    from pixpro_fast.config import ConfigError
    from pixpro_fast.training import check_sync_bn
    with pytest.raises(ConfigError, match="needs CUDA devices"):
        check_sync_bn(TrainConfig(sync_bn=True), torch.device("cpu"), 2)
    check_sync_bn(TrainConfig(sync_bn=True), torch.device("cpu"), 1)
    check_sync_bn(TrainConfig(sync_bn=True), torch.device("cuda", 0), 2)
    check_sync_bn(TrainConfig(), torch.device("cpu"), 2)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)           # as torchrun sets them
    with pytest.raises(SystemExit) as stop:
        cli_main(["--sync-bn", "--device", "cpu", "--loader", "synthetic", "--arch", "resnet18",
                  "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert "--sync-bn needs CUDA devices" in err and "drop --sync-bn for CPU runs" in err, err
    assert not dist.is_initialized() and not (tmp_path / "o").exists()
