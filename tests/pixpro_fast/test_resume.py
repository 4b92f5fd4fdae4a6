"""Runs that can be trusted: killed at any moment (mid-write included) and run again, a run
ends exactly where an uninterrupted one does; divergence, damaged files, changed settings
and reused folders are handled without losing or mixing work."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pixpro_fast.checkpoint import list_checkpoints, load_checkpoint, non_finite_entries
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import AbortRun, NonFiniteLossError, ResumeMismatchError, Trainer
from sample_data import BACKEND_MODULES
from test_engine import ROOT, TINY, cli_flags, image_folder

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
# default loader workers (num_workers not set), fp32, a checkpoint every 2 of the 6 steps
KILLED = {k: v for k, v in TINY.items() if k != "num_workers"}
KILLED.update(epochs=2, precision="fp32", ckpt_every=2, keep_ckpts=2)


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _launch(args, env=ENV, **popen):
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, **popen)


def _kill_when(proc, ready, timeout=180) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def _partial_write(out: Path) -> bool:
    return out.is_dir() and any(p.name.startswith(".ckpt_") for p in out.iterdir())


def _same_final_state(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(list_checkpoints(a)[-1]), load_checkpoint(list_checkpoints(b)[-1])
    assert sa["step"] == sb["step"] == 6
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for i, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["optimizer"]["state"][i][k]), (i, k)
    la = [(r["step"], r["loss"]) for r in _records(a)]
    lb = [(r["step"], r["loss"]) for r in _records(b)]
    assert [s for s, _ in la] == list(range(1, 7))
    assert la == lb


def _data_for(backend: str, tmp_path: Path) -> str:
    folder = image_folder(tmp_path / "data")            # 12 images, batch 4: 3 steps per epoch
    if backend != "ffcv":
        return str(folder)
    from pipelines import ffcv_writer
    out = tmp_path / "data.beton"
    ffcv_writer.write_beton(folder, out, max_resolution=0, num_workers=1, progress=False)
    return str(out)


@pytest.mark.parametrize("backend", ["torch", "dali", "ffcv"])
def test_kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run(backend, tmp_path):
    pytest.importorskip(BACKEND_MODULES[backend])
    data = _data_for(backend, tmp_path)
    cfg = dict(KILLED, data=data, loader=backend)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _launch(cli_flags(dict(cfg, out=str(straight))))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

    args = cli_flags(dict(cfg, out=str(killed)))
    rng = np.random.default_rng(0)
    # first while a checkpoint is being written, then at random moments after some steps
    triggers = [lambda: _partial_write(killed)]
    for _ in range(2):
        target = int(rng.integers(1, 6))
        triggers.append(lambda t=target: len(_records(killed)) >= t)
    kills = 0
    for ready in triggers:
        proc = _launch(args)
        if _kill_when(proc, ready):
            kills += 1
        else:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break
    else:
        proc = _launch(args)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    assert kills >= 1
    _same_final_state(straight, killed)
    assert not _partial_write(killed)      # what the mid-write kill left was removed


def _synthetic(cfg, batches=3):
    from pipelines import build_loader
    return build_loader("synthetic", None, cfg.batch_size, cfg.image_size, batches_per_epoch=batches, seed=cfg.seed)


def test_divergence_never_saves_non_finite_weights_and_names_a_finite_checkpoint(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path), base_lr=1e6, ckpt_every=1,
                             precision="fp32", lars_trust=1.0, keep_ckpts=100))
    with pytest.raises(NonFiniteLossError) as err:
        Trainer(cfg, loader=_synthetic(cfg, batches=20)).fit()
    message = str(err.value)
    assert "--precision" not in message            # already fp32: no such advice
    for path in list_checkpoints(tmp_path):
        assert not non_finite_entries(load_checkpoint(path)), path
    named = message.split("last good checkpoint is ")[1].split(". Try")[0]
    if named.startswith("none"):
        assert not list_checkpoints(tmp_path)
    else:
        assert not non_finite_entries(load_checkpoint(named))
        assert Path(named) == list_checkpoints(tmp_path)[-1]


def test_non_finite_state_is_refused_by_save(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path), precision="fp32"))
    tr = Trainer(cfg, loader=_synthetic(cfg))
    with torch.no_grad():
        next(tr.model.online.parameters())[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite .*online.encoder.conv1.weight"):
        tr.save()
    assert not list_checkpoints(tmp_path)


def test_fresh_run_into_a_used_folder_keeps_both_runs(tmp_path):
    base = dict(TINY, loader="synthetic", epochs=2, out=str(tmp_path), precision="fp32", ckpt_every=1, keep_ckpts=2)
    old = TrainConfig(**base)
    Trainer(old, loader=_synthetic(old)).fit()                     # steps 1..6
    new = TrainConfig(**dict(base, epochs=1, resume=False, seed=4))
    res = Trainer(new, loader=_synthetic(new)).fit()               # steps 1..3 of another run
    assert res.steps == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000002.pt", "ckpt_000000003.pt"]
    moved = [d for d in tmp_path.iterdir() if d.name.startswith("previous-")]
    assert len(moved) == 1 and len(list_checkpoints(moved[0])) == 2
    assert load_checkpoint(list_checkpoints(moved[0])[-1])["step"] == 6
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3]
    again = TrainConfig(**dict(base, epochs=1, seed=4))           # a plain run resumes the new run, not the old
    assert Trainer(again, loader=_synthetic(again)).maybe_resume().name == "ckpt_000000003.pt"


def test_changed_settings_on_resume_are_applied_or_refused(tmp_path):
    base = dict(TINY, loader="synthetic", epochs=2, out=str(tmp_path), precision="fp32", max_steps=2)
    cfg = TrainConfig(**base)
    Trainer(cfg, loader=_synthetic(cfg)).fit()
    changed = TrainConfig(**dict(base, max_steps=None, weight_decay=0.5, lars_trust=0.5, sgd_momentum=0.8))
    tr = Trainer(changed, loader=_synthetic(changed))
    tr.maybe_resume()
    for group in tr.optimizer.param_groups:
        assert (group["weight_decay"], group["trust_coefficient"], group["momentum"]) == (0.5, 0.5, 0.8)
    assert any(c.startswith("weight_decay: checkpoint has 1e-05") for c in tr.resume_changes)
    for key, value in (("optimizer", "sgd"), ("ppm_layers", 2), ("pixcontrast_weight", 0.5), ("recipe", "simclr")):
        other = TrainConfig(**dict(base, **{key: value}))
        with pytest.raises(ResumeMismatchError, match=f"{key}: checkpoint has"):
            Trainer(other, loader=_synthetic(other)).maybe_resume()


def test_every_config_field_is_applied_or_refused_on_resume():
    from pixpro_fast.config import resume_applied_changes, resume_differences
    saved = TrainConfig().to_dict()
    for name in saved:
        changed = dict(saved, **{name: "x-changed"})
        listed = resume_differences(changed, TrainConfig()) + resume_applied_changes(changed, TrainConfig())
        assert len(listed) == 1 and listed[0].startswith(name + ":"), name


def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, caplog):
    base = dict(TINY, loader="synthetic", epochs=2, out=str(tmp_path / "a"), precision="fp32", ckpt_every=1)
    straight = TrainConfig(**dict(base, out=str(tmp_path / "s")))
    Trainer(straight, loader=_synthetic(straight)).fit()
    cfg = TrainConfig(**dict(base, max_steps=4))
    Trainer(cfg, loader=_synthetic(cfg)).fit()
    newest = list_checkpoints(tmp_path / "a")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])                 # truncated under its final name
    (tmp_path / "a" / ".ckpt_000000005.pt.tmp999999").write_bytes(b"partial")   # a killed write
    resumed = TrainConfig(**base)
    with caplog.at_level("WARNING"):
        res = Trainer(resumed, loader=_synthetic(resumed)).fit()
    assert res.steps == 6 and "ckpt_000000004.pt" in caplog.text and "damaged" in caplog.text
    assert not (tmp_path / "a" / ".ckpt_000000005.pt.tmp999999").exists()
    a, s = (load_checkpoint(list_checkpoints(tmp_path / d)[-1])["model"] for d in ("a", "s"))
    assert all(torch.equal(v, s[k]) for k, v in a.items())
    assert [r["step"] for r in _records(tmp_path / "a")] == list(range(1, 7))


def test_full_disk_stops_with_a_clear_error_and_loses_no_saved_step(tmp_path, monkeypatch, capsys):
    import errno
    from pixpro_fast import checkpoint
    from pixpro_fast.cli import main as cli_main
    base = dict(TINY, loader="synthetic", epochs=1, max_steps=6, precision="fp32", ckpt_every=1, keep_ckpts=2)
    assert cli_main(cli_flags(dict(base, out=str(tmp_path / "s")))) == 0
    real_save = torch.save

    def fills_the_disk(obj, f):          # as torch.save fails on a full disk: bytes written, then an error
        if obj["step"] < 4:
            return real_save(obj, f)
        f.write(b"\0" * 1000)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    out = tmp_path / "a"
    monkeypatch.setattr(checkpoint.torch, "save", fills_the_disk)
    argv = cli_flags(dict(base, out=str(out)))
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "ckpt_000000004.pt: the disk is full" in err and "needs about" in err
    assert "ckpt_000000003.pt, is intact" in err and "Traceback" not in err
    left = sorted(p.name for p in out.iterdir() if p.name.startswith((".ckpt", "ckpt")))
    assert left == ["ckpt_000000002.pt", "ckpt_000000003.pt"]          # no partial file, nothing older deleted
    monkeypatch.setattr(checkpoint.torch, "save", real_save)       # space freed: the same command continues
    assert cli_main(argv) == 0
    a, s = (load_checkpoint(list_checkpoints(tmp_path / d)[-1]) for d in ("a", "s"))
    assert a["step"] == s["step"] == 6
    assert all(torch.equal(v, s["model"][k]) for k, v in a["model"].items())


def test_a_disk_too_small_for_one_checkpoint_is_refused_before_training(tmp_path, monkeypatch):
    import io
    import shutil
    from pixpro_fast import checkpoint
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path / "run"), precision="fp32",
                             keep_ckpts=3))
    need = checkpoint.state_bytes(Trainer(cfg, loader=_synthetic(cfg)).state_dict())
    free = {"bytes": need // 2}
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10 * need, 0, free["bytes"]))
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"needs at least \d+ MiB: free some space"):
        Trainer(cfg, loader=_synthetic(cfg)).fit()
    assert not list_checkpoints(tmp_path / "run") and not _records(tmp_path / "run")   # not a step was taken
    free["bytes"] = 2 * need                       # room for two, where the run needs keep + 1 = 4
    log = io.StringIO()
    res = Trainer(cfg, loader=_synthetic(cfg), log_stream=log).fit()
    assert res.steps == 3 and "has room for 2 checkpoint(s)" in log.getvalue()
    free["bytes"] = 5 * need
    log = io.StringIO()
    roomy = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path / "roomy"), precision="fp32",
                               keep_ckpts=3))
    Trainer(roomy, loader=_synthetic(roomy), log_stream=log).fit()
    assert "has room for" not in log.getvalue()


def test_ctrl_c_twice_aborts_at_once(tmp_path):
    out = tmp_path / "run"
    # steps long enough (resnet18, 160 px, batch 16) that the second press lands inside one
    args = cli_flags(dict(TINY, loader="synthetic", epochs=1000, out=str(out), ckpt_every=0, precision="fp32",
                          image_size=160, batch_size=16))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and len(_records(out)) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.15)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "aborted at once" in stderr and "Traceback" not in stderr
    assert not list_checkpoints(out)


def _torchrun(launcher_args, cfg, port_env=None):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher_args, str(ROOT / "train.py"),
                             *cli_flags(cfg)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "OMP_NUM_THREADS": "1"})


def _two_nodes(cfg, port):
    procs = [_torchrun(["--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1",
                        "--rdzv-endpoint", f"127.0.0.1:{port}"], cfg) for r in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-3000:]
    return errs[0]


def test_two_node_run_resumes_and_matches_a_single_node_run(tmp_path):
    data = image_folder(tmp_path / "data", n=16)          # 2 ranks x batch 4: 2 steps per epoch
    cfg = dict(TINY, data=str(data), epochs=2, precision="fp32", ckpt_every=1, device="cpu")
    single = _torchrun(["--nproc-per-node", "2", "--master-port", "29541"], dict(cfg, out=str(tmp_path / "single")))
    err = single.communicate(timeout=300)[1]
    assert single.returncode == 0, err[-3000:]
    assert "Warning" not in err, err[-3000:]           # no per-rank DDP warnings
    multi = dict(cfg, out=str(tmp_path / "multi"))
    _two_nodes(dict(multi, max_steps=2), 29542)         # stops after the first epoch ...
    err = _two_nodes(multi, 29543)                      # ... and the same command resumes it
    assert "resumed from" in err
    a, b = (load_checkpoint(list_checkpoints(tmp_path / d)[-1]) for d in ("single", "multi"))
    assert a["step"] == b["step"] == 4 and a["world_size"] == b["world_size"] == 2
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=1e-6, rtol=0, msg=k)


def test_resume_reads_the_same_data_folder_however_it_is_named(tmp_path, monkeypatch):
    """The data folder is recorded absolute: a relative name from another working folder that
    names other images is refused; the same folder by another name resumes; images added to
    the folder since the checkpoint change the steps per epoch and are refused too."""
    base = dict(TINY, epochs=2, max_steps=2, precision="fp32", out=str(tmp_path / "run"))
    image_folder(tmp_path / "a" / "imgs", n=8)
    image_folder(tmp_path / "b" / "imgs", n=12)
    monkeypatch.chdir(tmp_path / "a")
    Trainer(TrainConfig(**dict(base, data="imgs"))).fit()
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["config"]["data"] == str(tmp_path / "a" / "imgs")
    monkeypatch.chdir(tmp_path / "b")                                # 'imgs' here is another folder
    with pytest.raises(ResumeMismatchError, match="data: checkpoint has"):
        Trainer(TrainConfig(**dict(base, data="imgs", max_steps=3))).fit()
    same = TrainConfig(**dict(base, data=str(tmp_path / "a" / "imgs"), max_steps=3))
    assert Trainer(same).fit().steps == 3                           # one folder, named absolutely
    image_folder(tmp_path / "a" / "imgs", n=12)                     # four images added to it
    with pytest.raises(ResumeMismatchError, match="steps per epoch: checkpoint has 2, this run has 3"):
        Trainer(TrainConfig(**dict(base, data=str(tmp_path / "a" / "imgs"), max_steps=4))).fit()
    assert load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["step"] == 3   # nothing lost


# -- stop signals and timed checkpoints ------------------------------------------------------

# the built-in scenes (12: 3 steps per epoch), default loader workers, no step-count checkpoint
SIGNALLED = dict(KILLED, scenes_images=12, ckpt_every=1000)


@pytest.fixture(scope="module")
def scenes_run(cache, tmp_path_factory):
    """An uninterrupted run on the built-in scenes: the reference of the signal tests."""
    env = {**ENV, "PIXPRO_FAST_CACHE": str(cache)}
    out = tmp_path_factory.mktemp("straight")
    proc = _launch(cli_flags(dict(SIGNALLED, out=str(out))), env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, env


@pytest.mark.parametrize("name, group, rerun", [("SIGTERM", True, True), ("SIGUSR1", False, False)])
def test_a_stop_signal_saves_and_the_same_command_continues_exactly(name, group, rerun, scenes_run, tmp_path):
    """SIGTERM to the whole process group, loader workers included (as Slurm and torchrun send
    it), or SIGUSR1 to the training process: the step finishes, a checkpoint is written, the
    exit status is 128 + the signal's number, and the same command then ends where an
    uninterrupted run does (run again after SIGTERM only: the resume is the same after either)."""
    straight, env = scenes_run
    signum = getattr(signal, name)
    out = tmp_path / "run"
    args = cli_flags(dict(SIGNALLED, out=str(out)))
    proc = _launch(args, env, start_new_session=True)   # its own process group, as under a scheduler
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not _records(out):
        time.sleep(0.005)
    (os.killpg if group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"{name}: finishing this step" in err and "interrupted: saved" in err and f"({name})" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = load_checkpoint(list_checkpoints(out)[-1])["step"]
    assert stopped == len(_records(out)) < 6
    if rerun:
        proc = _launch(args, env)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and f"at step {stopped}" in err, err[-3000:]
        _same_final_state(straight, out)


def test_a_second_stop_signal_aborts_but_a_forwarded_copy_does_not(tmp_path):
    cfg = TrainConfig(**dict(TINY, loader="synthetic", epochs=1, out=str(tmp_path), precision="fp32"))
    tr = Trainer(cfg, loader=_synthetic(cfg))
    tr._on_signal(signal.SIGTERM, None)
    tr._on_signal(signal.SIGTERM, None)      # the same signal again at once: torchrun forwarding it
    assert tr._poll() == (signal.SIGTERM, False)
    with pytest.raises(AbortRun) as abort:
        tr._on_signal(signal.SIGUSR1, None)
    assert abort.value.signum == signal.SIGUSR1
    tr._signal_received = (signal.SIGTERM, time.monotonic() - 5)
    with pytest.raises(AbortRun):            # the same signal seconds later: a second request
        tr._on_signal(signal.SIGTERM, None)
    tr._signal_received = None
    tr._on_signal(signal.SIGINT, None)
    with pytest.raises(AbortRun) as abort:   # Ctrl-C twice aborts however fast
        tr._on_signal(signal.SIGINT, None)
    assert abort.value.signum == signal.SIGINT


def test_timed_checkpoints_leave_the_run_unchanged_and_resume_exactly(tmp_path):
    """--ckpt-every-minutes writes checkpoints at steps --ckpt-every does not: the run goes on
    exactly as one without them, and a resume from one ends where that run does. The clock is
    the step count (a minute a step); the signal handlers are the earlier ones afterwards."""
    base = dict(TINY, loader="synthetic", epochs=1, precision="fp32", ckpt_every=0, ckpt_every_minutes=2.5)
    plain = TrainConfig(**dict(base, out=str(tmp_path / "plain"), ckpt_every_minutes=0))
    Trainer(plain, loader=_synthetic(plain, batches=5)).fit()
    cfg = TrainConfig(**dict(base, out=str(tmp_path / "timed")))
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
    tr = Trainer(cfg, loader=_synthetic(cfg, batches=5))
    tr.clock = lambda: 60.0 * tr.step
    assert tr.fit().steps == 5
    assert handlers == [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]
    ckpts = list_checkpoints(tmp_path / "timed")
    assert [load_checkpoint(p)["step"] for p in ckpts] == [3, 5]   # 3 by the clock, 5 the end
    _same_final_state_of(tmp_path / "plain", tmp_path / "timed", steps=5)
    for p in ckpts[1:]:
        p.unlink()                            # the run was lost after its timed checkpoint at step 3
    again = Trainer(cfg, loader=_synthetic(cfg, batches=5))
    assert again.fit().steps == 5 and again.resume_changes == []
    _same_final_state_of(tmp_path / "plain", tmp_path / "timed", steps=5)


def _same_final_state_of(a: Path, b: Path, steps: int) -> None:
    sa, sb = load_checkpoint(list_checkpoints(a)[-1]), load_checkpoint(list_checkpoints(b)[-1])
    assert sa["step"] == sb["step"] == steps
    assert all(torch.equal(v, sb["model"][k]) for k, v in sa["model"].items())
    assert all(torch.equal(v, sb["optimizer"]["state"][i][k])
               for i, st in sa["optimizer"]["state"].items() for k, v in st.items())
    assert [(r["step"], r["loss"]) for r in _records(a)] == [(r["step"], r["loss"]) for r in _records(b)]
    assert [r["step"] for r in _records(a)] == list(range(1, steps + 1))


SIGNAL_WORKER = r'''
import json, os, signal, sys
sys.path.insert(0, sys.argv[2])
from pixpro_fast.config import TrainConfig
from pixpro_fast.engine import Trainer
from pipelines import build_loader
cfg = TrainConfig(arch="resnet18", image_size=64, proj_hidden_dim=64, proj_dim=32, batch_size=4, epochs=4,
                  loader="synthetic", tensorboard=False, out=sys.argv[1], device="cpu", warmup_epochs=0.0,
                  ckpt_every=0, keep_ckpts=10, ckpt_every_minutes=1.0, precision="fp32")
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
tr = Trainer(cfg, loader=build_loader("synthetic", None, 4, 64, batches_per_epoch=4, seed=rank, rank=rank,
                                      world_size=world))
tr.clock = lambda: 60.0 if tr.step >= 1 else 0.0     # read on rank 0 only: a minute has passed after step 1
step = tr.train_one_step

def train_step(micro):
    if rank == 1 and tr.step == 2:                   # only rank 1 is signalled, during step 3
        os.kill(os.getpid(), signal.SIGTERM)
    return step(micro)

tr.train_one_step = train_step
res = tr.fit()
json.dump({"steps": res.steps, "status": res.status, "signal": res.signal},
          open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w"))
'''


def test_ranks_agree_on_a_signal_one_rank_got_and_on_rank_0s_clock(tmp_path):
    """Two CPU processes: a timed checkpoint that rank 0's clock calls for and a SIGTERM that
    reaches rank 1 alone are acted on by both ranks at the same step: no rank waits in a
    collective the other never enters."""
    script = tmp_path / "worker.py"
    script.write_text(SIGNAL_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29551", str(script), str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300, env={**ENV, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"steps": 3, "status": "interrupted", "signal": int(signal.SIGTERM)}] * 2
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [1, 3]
    assert "interrupted: saved" in proc.stderr and "at step 3 (SIGTERM)" in proc.stderr
