"""Defaults that fit the machine (precision "auto" from the capability check), the verdict's
advice, the config's field metadata (help, validation, resume rules), one-line CLI errors,
progress to the real stop step, and the build_training API as the README shows it."""
import dataclasses
import io
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pixpro_fast import hardware
from pixpro_fast.cli import main as cli_main
from pixpro_fast.config import PRESETS_DIR, ConfigError, TrainConfig, resume_applied_changes, resume_differences
from pixpro_fast.engine import Trainer
from pixpro_fast.training import build_training

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(arch="resnet18", image_size=32, proj_hidden_dim=32, proj_dim=16, batch_size=4, num_workers=0,
            tensorboard=False, log_every=1, warmup_epochs=0.0, loader="synthetic", precision="fp32")
APPLY = {"num_workers", "on_corrupt", "max_pixels", "device", "channels_last", "compile", "compile_step", "out",
         "log_every",
         "ckpt_every", "ckpt_every_minutes", "keep_ckpts", "resume", "tensorboard", "profile", "probe_every",
         "probe_images", "max_steps", "weight_decay", "lars_trust", "sgd_momentum", "final_lr", "final_lr_fraction",
         "clip_grad_norm", "compile_mode", "attention", "sync_bn"}


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set the answer of the CPU capability check; the once-per-process warning is reset."""
    monkeypatch.setattr(hardware, "_warned", set())

    def answer(native: bool):
        monkeypatch.setattr(hardware, "cpu_bf16_native", lambda: native)
    return answer


def _synthetic(cfg, batches=3):
    from pipelines import build_loader
    return build_loader("synthetic", None, cfg.batch_size, cfg.image_size, batches_per_epoch=batches, seed=cfg.seed)


# -- precision ---------------------------------------------------------------------------

def test_auto_precision_follows_the_cpu_capability(cpu_bf16):
    cpu_bf16(True)
    assert hardware.resolve_precision("auto", "cpu") == "bf16"
    assert "bf16" in hardware.native_precisions("cpu")
    cpu_bf16(False)
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    assert hardware.native_precisions("cpu")[0] == "fp32" and "bf16" not in hardware.native_precisions("cpu")


def test_explicit_emulated_precision_runs_after_one_warning(cpu_bf16):
    cpu_bf16(False)
    with pytest.warns(RuntimeWarning, match="no native bf16 instructions.*slower than fp32"):
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"     # once per process
    cpu_bf16(True)
    hardware._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"     # native: no warning
        assert hardware.resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_trainer_and_builder_resolve_auto_with_the_check(cpu_bf16, tmp_path, native, expected):
    cpu_bf16(native)
    cfg = TrainConfig(**dict(TINY, precision="auto", out=str(tmp_path)))
    assert build_training(cfg, loader=_synthetic(cfg)).precision == expected
    assert Trainer(cfg, loader=_synthetic(cfg)).precision == expected


def test_every_preset_leaves_precision_to_auto():
    for path in PRESETS_DIR.glob("*.json"):
        assert TrainConfig.from_file(path).precision == "auto", path.name


def test_step_benchmark_skips_emulated_precisions(cpu_bf16):
    from benchmarks import bench_step, suite
    cpu_bf16(False)
    res = bench_step.run("resnet18", 32, 2, [bench_step.BASELINE, bench_step.StepSetting("bf16", True, False)],
                         warmup=0, iters=1, proj_hidden_dim=32, matmul_n=64, log=lambda *a: None)
    assert [r["setting"] for r in res["rows"]] == ["fp32/contiguous/eager"]
    assert res["skipped"][0]["setting"] == "bf16/channels-last/eager"
    assert "no native bf16" in res["skipped"][0]["reason"]
    assert suite.best_setting("cpu").precision == "fp32"
    cpu_bf16(True)
    assert suite.best_setting("cpu").precision == "bf16"


def test_quick_plan_has_cpu_compile_rows_only_when_asked():
    from benchmarks import suite
    for compile_cpu in (False, True):
        p = suite.plan("quick", cuda=False, compile_cpu=compile_cpu)
        compiled = [s for job in p["step"] for s in job["settings"] if s.compiled]
        assert bool(compiled) == compile_cpu
        assert p["end_to_end"]["precision"] == "auto"


def test_run_verdict_drops_emulated_bf16_and_names_the_warm_up(cpu_bf16, tmp_path):
    cpu_bf16(False)
    log = io.StringIO()
    cfg = TrainConfig(**dict(TINY, epochs=1, out=str(tmp_path), log_every=100))
    Trainer(cfg, loader=_synthetic(cfg, batches=25), log_stream=log).fit()
    done = next(line for line in log.getvalue().splitlines() if line.startswith("done"))
    assert "after the first 5 steps" in done and "bf16" not in done and "torch.compile" in done
    assert "larger batch" not in done        # a CPU's step time grows with the batch


def test_short_run_gives_no_verdict(tmp_path):
    log = io.StringIO()
    cfg = TrainConfig(**dict(TINY, epochs=1, out=str(tmp_path), log_every=100))
    Trainer(cfg, loader=_synthetic(cfg, batches=4), log_stream=log).fit()
    done = next(line for line in log.getvalue().splitlines() if line.startswith("done"))
    assert "too few steps to judge loader- or compute-bound (0 measured after the warm-up; at least 20 needed)" in done
    assert "remedies" not in done


# -- progress ----------------------------------------------------------------------------

def test_progress_counts_to_max_steps(tmp_path):
    log = io.StringIO()
    cfg = TrainConfig(**dict(TINY, epochs=5, max_steps=3, out=str(tmp_path)))
    tr = Trainer(cfg, loader=_synthetic(cfg, batches=4), log_stream=log)
    assert tr.total_steps == 20
    tr.fit()
    lines = [line for line in log.getvalue().splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert lines[-1].endswith("eta 0.0 min")


# -- config metadata and resume rules ------------------------------------------------------

def test_every_field_has_help_and_a_resume_rule():
    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 10, f.name
        assert f.metadata.get("resume") in ("refuse", "apply"), f.name
    assert {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "apply"} == APPLY


def test_resume_differences_and_applied_changes():
    saved = TrainConfig(**TINY).to_dict()
    cur = TrainConfig(**dict(TINY, batch_size=2, pos_ratio=0.5, num_workers=3, lars_trust=0.02))
    refused = resume_differences(saved, cur)
    assert refused == ["pos_ratio: checkpoint has 0.7, config has 0.5", "batch_size: checkpoint has 4, config has 2"]
    applied = resume_applied_changes(saved, cur)
    assert sorted(applied) == ["lars_trust: checkpoint has 0.001, config has 0.02",
                               "num_workers: checkpoint has 0, config has 3"]
    assert resume_differences(saved, TrainConfig(**TINY)) == [] == resume_applied_changes(saved, TrainConfig(**TINY))


@pytest.mark.parametrize("change, key", [(dict(loader="nosuch"), "loader"), (dict(arch="resnet19"), "arch"),
                                         (dict(recipe="nosuch"), "recipe"), (dict(method="nosuch"), "method"),
                                         (dict(base_lr=-1.0), "base_lr"), (dict(lars_trust=-0.1), "lars_trust"),
                                         (dict(weight_decay=-1e-5), "weight_decay"), (dict(num_workers=-1), "num_workers"),
                                         (dict(num_workers=100_000), "num_workers"), (dict(image_size=65_536), "image_size"),
                                         (dict(batch_size="8"), "batch_size"), (dict(device="gpu"), "device"),
                                         (dict(max_pixels=-1), "max_pixels")])
def test_bad_values_name_the_field(change, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**change).validate()
    assert info.value.key == key and repr(next(iter(change.values()))) in str(info.value)


# -- the command line ----------------------------------------------------------------------

def _cli_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    err = capsys.readouterr().err.strip()
    return info.value.code, err


@pytest.mark.parametrize("argv, needle", [
    (["--loader", "nosuch"], "--loader must be one of torch, dali, ffcv, synthetic; got 'nosuch'"),
    (["--arch", "resnet19"], "--arch must be one of resnet18,"),
    (["--recipe", "nosuch"], "--recipe must be one of byol, simclr, mocov2, swav_multicrop, loca, single; got 'nosuch'"),
    (["--method", "nosuch"], "--method must be one of pixpro,"),
    (["--base-lr", "-1"], "--base-lr must be at least 0, got -1.0"),
    (["--lars-trust", "-1"], "--lars-trust must be at least 0"),
    (["--weight-decay", "-1"], "--weight-decay must be at least 0"),
    (["--num-workers", "-1"], "--num-workers must be at least 0, got -1"),
    (["--num-workers", "5000"], "--num-workers must be at most 1024, got 5000"),
    (["--image-size", "8192"], "--image-size must be at most 4096, got 8192"),
    (["--max-pixels", "-1"], "--max-pixels must be at least 0, got -1"),
    (["--batch-size", "x"], "--batch-size: invalid int value: 'x'"),
])
def test_bad_flags_end_with_one_line_and_status_2(argv, needle, capsys):
    code, err = _cli_error(argv, capsys)
    assert code == 2 and needle in err and "\n" not in err and err.startswith("train.py: error: ")


def test_bad_data_and_batch_end_before_training(tmp_path, capsys):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"not a folder")
    code, err = _cli_error(["--data", str(f), "--arch", "resnet18", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--data" in err and "is not a directory" in err and "\n" not in err
    code, err = _cli_error(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--data" in err and "does not exist" in err
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (64, 48), (i * 40, 0, 0)).save(folder / f"{i}.jpg")
    code, err = _cli_error(["--data", str(folder), "--batch-size", "8", "--num-workers", "0",
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--batch-size 8" in err and "3 images" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_max_pixels_flag_reaches_the_loader(tmp_path):
    from PIL import Image

    from pixpro_fast.cli import _Parser, add_config_flags, config_from_args
    from pixpro_fast.training import build_loader_for
    for i in range(4):   # 64 x 48 = 3072 pixels, or 40 x 30
        Image.new("RGB", (64, 48) if i % 2 else (40, 30), (i * 40, 0, 0)).save(tmp_path / f"{i}.jpg")
    parser = _Parser()
    add_config_flags(parser)
    args = parser.parse_args(["--data", str(tmp_path), "--loader", "torch", "--batch-size", "2", "--max-pixels", "3000",
                              "--num-workers", "0", "--out", str(tmp_path / "o")])
    cfg = config_from_args(args)
    assert cfg.max_pixels == 3000 and TrainConfig().max_pixels == 50_000_000
    loader = build_loader_for(cfg, torch.device("cpu"))
    assert loader.dataset.max_pixels == 3000
    batches = list(loader)
    assert sum(b.skipped for b in batches) == 2 and set(torch.cat([b.index for b in batches]).tolist()) == {0, 2}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_one_line_in_a_fresh_process():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("train.py: error: --device 'cuda' requested but CUDA is not available on this "
                                   "machine; use auto or cpu")


def test_help_shows_meaning_default_and_choices(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()) in text, f.name
    assert "(default: torch; choices: torch, dali, ffcv, synthetic)" in text
    assert "(default: auto; choices: auto, fp32, bf16, fp16)" in text


# -- build_training and the README's own loop ------------------------------------------------

def test_build_training_schedules_follow_the_formulas(tmp_path):
    cfg = TrainConfig(**dict(TINY, epochs=2, warmup_epochs=1.0, base_lr=0.5, batch_size=4, final_lr=0.001,
                             ema_momentum=0.9, out=str(tmp_path)))
    t = build_training(cfg, loader=_synthetic(cfg, batches=4))
    assert (t.steps_per_epoch, t.total_steps, t.warmup_steps, t.global_batch) == (4, 8, 4, 4)
    peak = 0.5 * 4 / 256
    assert math.isclose(t.peak_lr, peak)
    assert math.isclose(t.lr_at(0), peak / 100) and math.isclose(t.lr_at(2), peak / 100 + (peak - peak / 100) / 2)
    assert math.isclose(t.lr_at(6), 0.001 + (peak - 0.001) * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert math.isclose(t.momentum_at(4), 1 - 0.1 * (math.cos(math.pi * 4 / 8) + 1) / 2)
    assert t.set_lr(6) == t.lr_at(6) and all(g["lr"] == t.lr_at(6) for g in t.optimizer.param_groups)
    trained = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in t.method.online.parameters()}
    # the target update uses the scheduled momentum: theta_k <- m theta_k + (1 - m) theta_q
    with torch.no_grad():
        for p in t.method.online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in t.method.target.parameters()]
    online = dict(t.method.online.named_parameters())
    t.update_target(4)
    m = t.momentum_at(4)
    for (name, p), old in zip(t.method.target.named_parameters(), before):
        torch.testing.assert_close(p, m * old + (1 - m) * online[name], rtol=1e-6, atol=1e-6)


def test_trainer_is_built_by_build_training(tmp_path):
    cfg = TrainConfig(**dict(TINY, epochs=3, out=str(tmp_path)))
    tr = Trainer(cfg, loader=_synthetic(cfg))
    t = tr.training
    assert tr.model is t.method and tr.optimizer is t.optimizer and tr.loader is t.loader
    assert (tr.steps_per_epoch, tr.total_steps, tr.peak_lr, tr.warmup_steps, tr.global_batch) == \
        (t.steps_per_epoch, t.total_steps, t.peak_lr, t.warmup_steps, t.global_batch)
    tr.step = 5
    assert tr._momentum() == t.momentum_at(5)


def test_readme_own_loop_runs_as_written(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    t = namespace["t"]
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) == t.stop_step == 6 and all(math.isfinite(v) for v in losses)
