"""The benchmark suite: its smoke mode runs end to end and writes consistent results; the
verdict, FLOP counting and skip paths behave. Nothing here asserts a speed."""
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import bench_end_to_end, bench_loaders, bench_peers, bench_step, bench_torch_loader, chart
from benchmarks.common import batches_forever, steady_rate
from pixpro_fast.hardware import native_precisions
from sample_data import installed_backends, jpeg_folder
from pixpro_fast.metrics import verdict

ROOT = Path(__file__).resolve().parents[2]


def image_folder(root: Path, n: int = 32) -> Path:
    return jpeg_folder(root, n, first=(96, 128), step=(5, -2))


def close(a, b, rel=1e-9):
    return math.isclose(a, b, rel_tol=rel)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    data = image_folder(tmp / "data")
    out = tmp / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out), "--data-dir", str(data),
                           "--backends", "torch", "--threads", "1", "--no-cuda"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Attempted to fork" not in proc.stderr
    return out, json.loads((out / "suite.json").read_text()), proc.stdout


def test_smoke_writes_json_markdown_and_chart(smoke):
    out, result, stdout = smoke
    assert result["mode"] == "smoke"
    assert set(result["sections"]) == {"loaders", "step", "end_to_end", "peers"}
    assert {"cpu_count", "torch", "cpu_capability"} <= set(result["machine"])
    assert result["machine"]["torch_threads"] == 1
    assert all(v > 0 for v in result["durations_s"].values())
    assert (out / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "suite.md").read_text()
    for heading in ("## Loaders", "## Step", "## End to end", "## Peers", "## Summary"):
        assert heading in md
    assert "| pipeline |" in stdout and "speedup_vs_fp32_eager" in stdout
    # every table gives the absolute rate, the device named, beside its ratios
    for header in ("| images/s (cpu) |", "| PixPro images/s (cpu) |", "| feed images/s (cpu) |"):
        assert header in stdout and header in md
    assert ("mfu_vs_bf16_matmul" in stdout) == ("bf16" in native_precisions("cpu"))


def test_smoke_loader_ratios_match_rates(smoke):
    ld = smoke[1]["sections"]["loaders"]
    rows = {r["pipeline"]: r for r in ld["rows"]}
    assert {bench_loaders.DECODE, bench_loaders.BASELINE, "torch loader (2 views + boxes)",
            "torchvision stock 1-view RRC"} <= set(rows)
    base = rows[bench_loaders.BASELINE]["images_per_s"]
    ceiling = rows[bench_loaders.DECODE]["images_per_s"]
    for name, r in rows.items():
        assert r["images_per_s"] > 0
        assert close(r["images_per_s"], sorted(ld["rates"][name])[len(ld["rates"][name]) // 2])
        assert close(r["vs_baseline"], r["images_per_s"] / base)
        assert close(r["vs_decode_ceiling"], r["images_per_s"] / ceiling)
    assert rows[bench_loaders.BASELINE]["vs_baseline"] == 1.0


def test_smoke_step_ratios_match_times(smoke):
    (sec,) = smoke[1]["sections"]["step"]
    flops = sec["flops_per_image"]
    assert flops["pixpro"] > flops["supervised"] > 0
    assert close(flops["ratio"], flops["pixpro"] / flops["supervised"])
    rows = {r["setting"]: r for r in sec["rows"]}
    bf16 = "bf16/channels-last/eager"
    if "bf16" in native_precisions("cpu"):
        assert set(rows) == {"fp32/contiguous/eager", bf16} and sec["skipped"] == []
    else:   # emulated here: listed as skipped, with why
        assert set(rows) == {"fp32/contiguous/eager"}
        assert [s["setting"] for s in sec["skipped"]] == [bf16] and "no native bf16" in sec["skipped"][0]["reason"]
    base = rows["fp32/contiguous/eager"]["pixpro_step_s"]
    for r in rows.values():
        assert r["pixpro_step_s"] > 0 and r["supervised_step_s"] > 0
        assert close(r["speedup_vs_fp32_eager"], base / r["pixpro_step_s"])
        assert close(r["flop_throughput_ratio"],
                     flops["pixpro"] * r["supervised_step_s"] / (flops["supervised"] * r["pixpro_step_s"]))
        assert close(r["pixpro_images_per_s"], sec["batch_size"] / r["pixpro_step_s"])
        ref = "bf16" if "bf16" in native_precisions("cpu") else "fp32"   # bf16 MFU only where native
        assert sec["mfu_reference"] == ref and f"mfu_vs_{'fp32' if ref == 'bf16' else 'bf16'}_matmul" not in r
        assert 0 < r[f"mfu_vs_{ref}_matmul"]
        assert close(r[f"mfu_vs_{ref}_matmul"], r["pixpro_flops_per_s"] / sec["matmul_flops_per_s"][ref])


def test_smoke_end_to_end_split_and_verdict(smoke):
    e2e = smoke[1]["sections"]["end_to_end"]
    rows = {r["backend"]: r for r in e2e["rows"]}
    assert set(rows) == {"synthetic", "torch"}
    for r in rows.values():
        assert len(r["waits"]) == len(r["computes"]) == e2e["steps"] == r["steps"]
        assert close(r["wait_s"], sum(r["waits"])) and close(r["compute_s"], sum(r["computes"]))
        assert close(r["wait_fraction"], r["wait_s"] / (r["wait_s"] + r["compute_s"]))
        in_use = ("bf16 autocast",) * (e2e["precision"] != "fp32") + ("channels-last",)
        assert r["verdict"] == verdict(r["wait_fraction"], in_use=in_use, loader=r["backend"],
                                       bf16_native="bf16" in native_precisions("cpu"),
                                       warmup_steps=e2e["skipped_steps"])
        assert f"after the first {e2e['skipped_steps']} steps" in r["verdict"]
        assert close(r["vs_compute_ceiling"], r["images_per_s"] / rows["synthetic"]["images_per_s"])


def test_smoke_peers_ratio_or_skip(smoke):
    (sec,) = smoke[1]["sections"]["peers"]
    if importlib.util.find_spec(bench_peers.PACKAGE) is None:
        assert sec["skipped"] and sec["rows"] == []
        return
    assert sec["skipped"] is None and len(sec["rows"]) == 2
    for r in sec["rows"]:
        assert r["ours_step_s"] > 0 and r["pixelcl_step_s"] > 0
        assert close(r["speedup_vs_pixelcl"], r["pixelcl_step_s"] / r["ours_step_s"])


# -- the verdict, on synthetic timings --------------------------------------------------------

def test_verdict_thresholds():
    assert verdict(0.38).startswith("loader-bound: 38% of wall time waiting")
    assert verdict(0.10).startswith("loader-bound")          # the threshold itself counts as loader-bound
    assert verdict(0.0999).startswith("compute-bound")
    assert verdict(0.0).startswith("compute-bound: 0%")
    assert verdict(0.2, threshold=0.25).startswith("compute-bound")
    assert "workers" in verdict(0.5) and "bf16" in verdict(0.01)   # each names its remedy
    # remedies a run already uses are not suggested again
    held = verdict(0.01, in_use=("bf16 autocast", "channels-last"))
    assert "bf16" not in held and "channels-last" not in held and "torch.compile" in held


def test_summarise_synthetic_timings():
    s = bench_end_to_end.summarise([0.25] * 4, [0.75] * 4, batch_size=16)
    assert close(s["wait_fraction"], 0.25) and close(s["wall_s"], 4.0)
    assert close(s["images_per_s"], 64 / 4.0)
    assert s["verdict"].startswith("loader-bound: 25% of wall time waiting")
    fast = bench_end_to_end.summarise([0.001, 0.002, 0.001], [1.0, 1.1, 0.9], batch_size=8)
    assert fast["verdict"].startswith("compute-bound") and close(fast["median_compute_s"], 1.0)
    with pytest.raises(ValueError):
        bench_end_to_end.summarise([0.1], [0.2, 0.3], 4)
    with pytest.raises(ValueError):
        bench_end_to_end.summarise([], [], 4)


def test_steady_rate_is_the_slope_not_the_first_burst():
    # even arrivals: the rate is exact
    assert close(steady_rate([0.5 + 0.1 * i for i in range(10)], 8), 80.0)
    # 4 workers finishing together every 0.4 s: 10 batches/s. A clock stopped after the first
    # burst (3 batches in 0 s) would say infinity; the slope over five bursts is within 10%
    bursts = [0.4 * (i // 4) + 1e-4 * (i % 4) for i in range(20)]
    assert abs(steady_rate(bursts, 1) / 10.0 - 1) < 0.1
    with pytest.raises(ValueError):
        steady_rate([1.0], 8)
    with pytest.raises(ValueError):
        steady_rate([2.0, 1.0, 0.0], 8)


def test_batches_forever_runs_across_epochs_with_their_own_order():
    class Loader:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            e = self.epochs[-1]
            return iter([(e, 0), (e, 1)])

    loader = Loader()
    stream = batches_forever(loader)
    got = [next(stream) for _ in range(5)]
    assert got == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)] and loader.epochs == [0, 1, 2]
    assert [next(batches_forever([1, 2])) for _ in range(2)] == [1, 1]   # no set_epoch: a plain iterable


def test_loader_section_forks_its_workers_without_numba_warnings(tmp_path):
    """numba's TBB pool (started on the main thread, as importing FFCV does) warns on stderr when
    a process forks from another thread: the torch loader starts its workers in the consumer's
    thread, not in its colour thread."""
    data = image_folder(tmp_path / "data", n=12)
    script = (
        "import numba\n"
        "numba.get_num_threads()   # starts numba's thread pool here, on the main thread\n"
        "from benchmarks import bench_loaders\n"
        f"bench_loaders.run({str(data)!r}, batch_size=2, image_size=32, workers=1, batches=1, rounds=1,\n"
        f"                  backends=('torch',), work_dir={str(tmp_path)!r}, log=lambda *a: None)\n"
        "print('layer', numba.threading_layer())\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layer " in proc.stdout and "Attempted to fork" not in proc.stderr


def test_end_to_end_runs_past_an_epoch_and_reports_the_feed_rate(tmp_path):
    """More steps than one pass holds: the run goes on into the next epoch instead of being
    skipped, and the loader's own rate (no step) stands beside the step's."""
    data = image_folder(tmp_path / "data", n=12)
    result = bench_end_to_end.run(data, ("torch",), arch="resnet18", image_size=32, batch_size=4, steps=5, skip=1,
                                  precision="fp32", workers=1, proj_hidden_dim=64, log=lambda *a: None)
    rows = {r["backend"]: r for r in result["rows"]}
    assert not result["skipped"] and set(rows) == {"synthetic", "torch"}
    torch_row = rows["torch"]
    assert len(torch_row["waits"]) == 5   # 6 batches from a folder of 3
    assert torch_row["feed_images_per_s"] > 0 and "feed_images_per_s" not in rows["synthetic"]
    assert close(torch_row["feed_vs_compute_ceiling"],
                 torch_row["feed_images_per_s"] / rows["synthetic"]["images_per_s"])
    assert "feed_vs_compute_ceiling" in bench_end_to_end.table(result)


def test_end_to_end_names_a_colour_place_and_gives_ffcv_a_beton_of_the_same_images(tmp_path, capsys):
    """``torch:workers`` runs the torch backend with its colour steps in the workers; the
    ffcv row reads a .beton written from the folder (or is skipped with the reason where FFCV
    is not installed); a place the backend lacks is a skipped row naming it."""
    data = image_folder(tmp_path / "data", n=12)
    args = ["--data-dir", str(data), "--backends", "torch:workers,torch:pipeline,ffcv", "--arch", "resnet18",
            "--image-size", "32", "--batch-size", "4", "--steps", "2", "--skip", "1", "--precision", "fp32",
            "--workers", "1", "--out", str(tmp_path / "out")]
    result = bench_end_to_end.main(args)
    rows = {r["backend"]: r for r in result["rows"]}
    assert rows["torch:workers"]["colour"] == "workers" and rows["synthetic"]["colour"] is None
    assert "colour must be one of" in result["skipped"]["torch:pipeline"]
    if "ffcv" in installed_backends():
        assert "ffcv" in rows and list((tmp_path / "out" / "ffcv").glob("*.beton"))
    else:
        assert "ffcv" in result["skipped"]


def test_epoch_turn_benchmark_counts_each_wait_once_per_mode(tmp_path):
    from benchmarks import bench_epoch_turn
    data = image_folder(tmp_path / "data", n=12)
    result = bench_epoch_turn.run(data, batch_size=4, image_size=32, workers=1, epochs=2, rounds=1, log=lambda *a: None)
    assert result["batches_per_epoch"] == 3 and result["step_s"] > 0
    assert [r["mode"] for r in result["rows"]] == list(bench_epoch_turn.MODES)
    for r in result["rows"]:
        assert len(r["turn_waits_s"]) == 2 and len(r["inside_waits_s"]) == 2 * 2
        waited = sum(r["turn_waits_s"]) + sum(r["inside_waits_s"])
        assert close(r["wait_fraction"], waited / (waited + 6 * result["step_s"]))


# -- FLOP counting ----------------------------------------------------------------------------

def test_flop_ratio_resnet18_64px():
    """Online fwd+bwd of two views (6F), target fwd of two views (2F), supervised fwd+bwd (3F):
    about 8/3 plus the projector and PPM."""
    pix = bench_step.pixpro_flops_per_image("resnet18", 64)
    sup = bench_step.supervised_flops_per_image("resnet18", 64)
    assert 1e8 < sup < 2e9
    assert 2.6 < pix / sup < 3.3


def test_settings_grid():
    grid = bench_step.settings_grid(compiled="best")
    assert len(grid) == 7 and bench_step.BASELINE in grid
    assert [s for s in grid if s.compiled] == [bench_step.StepSetting("bf16", True, True)]
    assert len(bench_step.settings_grid(compiled="all")) == 12
    with pytest.raises(ValueError):
        bench_step.settings_grid(compiled="some")


def test_step_levers_are_rows_beside_the_step_they_change():
    cpu = bench_step.lever_settings("fp32", "cpu")
    names = [s.name for s in cpu]
    assert len(set(names)) == len(names) and "fp32/channels-last/compiled max-autotune" in names
    assert not any("reduce-overhead" in n for n in names)
    assert any("reduce-overhead" in s.name for s in bench_step.lever_settings("bf16", "cuda"))
    only = bench_step.lever_settings("bf16", "cuda", ("max-autotune",))
    assert [s.name for s in only] == ["bf16/channels-last/compiled", "bf16/channels-last/compiled max-autotune"]
    assert [s.name for s in bench_step.lever_settings("bf16", "cpu", ("reduce-overhead",))] == [only[0].name]
    with pytest.raises(ValueError, match="unknown lever"):
        bench_step.lever_settings("bf16", "cuda", ("max-autotune", "cuda-graphs"))
    plain = bench_step.StepSetting("fp32", True, False)
    concat = dataclasses.replace(plain, concat_views=True)
    result = bench_step.run("resnet18", 32, 4, [plain, concat], "cpu", warmup=1, iters=1, proj_hidden_dim=32,
                            matmul_n=64, log=lambda *a: None)
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"fp32/contiguous/eager", "fp32/channels-last/eager", "fp32/channels-last/eager +concat-views"}
    assert rows["fp32/channels-last/eager +concat-views"]["concat_views"] is True
    assert rows["fp32/contiguous/eager"]["speedup_vs_fp32_eager"] == 1.0
    # one view: the concat-views row's supervised step is the plain row's, timed once; a compile
    # mode's row is held to the default-mode step
    assert bench_step.supervised_setting(only[1]) == only[0]
    assert (rows["fp32/channels-last/eager +concat-views"]["supervised_step_s"]
            == rows["fp32/channels-last/eager"]["supervised_step_s"])


def test_whole_step_and_batch_levers_are_rows_with_their_own_rates():
    cpu = [s.name for s in bench_step.lever_settings("bf16", "cpu", ("whole-step", "batch-x2"))]
    assert cpu == ["bf16/channels-last/compiled", "bf16/channels-last/compiled whole-step",
                   "bf16/channels-last/compiled batch x2"]
    gpu = [s.name for s in bench_step.lever_settings("bf16", "cuda", ("whole-step",))]
    assert gpu[-1] == "bf16/channels-last/compiled whole-step reduce-overhead"
    doubled = bench_step.StepSetting("fp32", True, False, batch_scale=2)
    assert bench_step.supervised_setting(doubled) == bench_step.StepSetting("fp32", True, False)
    result = bench_step.run("resnet18", 32, 4, [doubled], "cpu", warmup=1, iters=1, proj_hidden_dim=32,
                            matmul_n=64, log=lambda *a: None)
    row = next(r for r in result["rows"] if r["setting"] == doubled.name)
    base = next(r for r in result["rows"] if r["setting"] == "fp32/contiguous/eager")
    assert (row["batch_size"], row["supervised_batch_size"]) == (8, 4)
    assert row["pixpro_images_per_s"] == pytest.approx(8 / row["pixpro_step_s"])
    assert row["speedup_vs_fp32_eager"] == pytest.approx(row["pixpro_images_per_s"] / base["pixpro_images_per_s"])


def test_step_mfu_is_held_to_bf16_only_where_bf16_is_native(monkeypatch):
    """On a device without native bf16 the table has no "vs bf16 matmul" column: MFU is held to
    an fp32 matmul and the column says so; the rate column names the device."""
    monkeypatch.setattr(bench_step, "native_precisions", lambda device: ("fp32",))
    monkeypatch.setattr(bench_step, "pixpro_flops_per_image", lambda *a, **k: 3e9)
    monkeypatch.setattr(bench_step, "supervised_flops_per_image", lambda *a, **k: 1e9)
    result = bench_step.run("resnet18", 32, 2, [bench_step.BASELINE], "cpu", warmup=0, iters=1, proj_hidden_dim=32,
                            matmul_n=64, log=lambda *a: None)
    assert result["mfu_reference"] == "fp32" and set(result["matmul_flops_per_s"]) == {"fp32"}
    (row,) = result["rows"]
    assert close(row["mfu_vs_fp32_matmul"], row["pixpro_flops_per_s"] / result["matmul_flops_per_s"]["fp32"])
    assert "mfu_vs_bf16_matmul" not in row
    text = bench_step.table(result)
    assert "mfu_vs_fp32_matmul" in text and "bf16" not in text.splitlines()[0]
    assert "| PixPro images/s (cpu) | supervised images/s (cpu) |" in text


def test_peers_table_gives_both_rates_beside_the_ratio():
    row = {"device": "cpu", "arch": "resnet18", "image_size": 64, "batch_size": 8, "comparison": "same setting",
           "ours_step_s": 0.5, "pixelcl_step_s": 1.0, "speedup_vs_pixelcl": 2.0,
           "ours_images_per_s": 16.0, "pixelcl_images_per_s": 8.0}
    text = bench_peers.table({"device": "cpu", "rows": [row], "skipped": None})
    header, _, line = text.splitlines()
    assert "| ours images/s (cpu) | PixelCL images/s (cpu) | speedup_vs_pixelcl |" in header
    assert "| 16 | 8 | 2 |" in line


def test_bench_step_writes_its_json_after_every_round(tmp_path, monkeypatch):
    """A run cut off part-way (a lease's end) keeps the rounds it timed: step.json is written
    after each round, marked partial, and the last write is the whole result."""
    writes = []
    real_write = bench_step.write_json

    def recording_write(out, name, payload):
        writes.append(json.loads(json.dumps(payload)))
        return real_write(out, name, payload)
    monkeypatch.setattr(bench_step, "write_json", recording_write)
    monkeypatch.setattr(bench_step, "pixpro_flops_per_image", lambda *a, **k: 3e9)
    monkeypatch.setattr(bench_step, "supervised_flops_per_image", lambda *a, **k: 1e9)
    result = bench_step.main(["--image-size", "32", "--batch-size", "2", "--precisions", "fp32", "--compiled", "none",
                              "--iters", "3", "--out", str(tmp_path)])
    assert [w.get("partial") for w in writes] == [True, True, None]
    assert [w["rounds"] for w in writes[:2]] == [1, 2]
    assert all(w["rows"] and w["rows"][0]["setting"] == "fp32/contiguous/eager" for w in writes)
    saved = json.loads((tmp_path / "step.json").read_text())
    assert "partial" not in saved and saved["rows"] == json.loads(json.dumps(result["rows"]))


def test_bench_step_only_needs_levers_and_known_names(capsys):
    for argv, needle in [(["--only", "max-autotune"], "--only needs --levers"),
                         (["--levers", "bf16", "--only", "max-autotune,graphs"], "unknown lever(s) graphs")]:
        with pytest.raises(SystemExit):
            bench_step.main(argv)
        assert needle in capsys.readouterr().err


# -- skipping what is not installed -----------------------------------------------------------

def test_loader_backend_without_its_library_is_skipped(tmp_path, monkeypatch):
    def missing(bench):
        raise bench_loaders.Unavailable("FakeLib not installed")
    monkeypatch.setitem(bench_loaders.BACKENDS, "fake", missing)
    data = image_folder(tmp_path / "data", n=12)
    res = bench_loaders.run(data, batch_size=2, image_size=32, workers=0, batches=1, rounds=1, backends=("fake",),
                            work_dir=tmp_path, log=lambda *a: None)
    assert res["skipped"] == {"fake": "FakeLib not installed"}
    references = [bench_loaders.DECODE, bench_loaders.TV_DECODE, bench_loaders.BASELINE]
    assert [r["pipeline"] for r in res["rows"]] == references


def test_peer_is_skipped_when_package_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == bench_peers.PACKAGE else real(name, *a))
    reason = bench_peers.pixelcl_missing()
    assert reason and bench_peers.PIP_NAME in reason
    res = bench_peers.run("resnet18", 64, 2, log=lambda *a: None)
    assert res["rows"] == [] and res["skipped"] == reason
    assert "skipped" in bench_peers.table(res)


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None and importlib.util.find_spec("ffcv") is None,
                    reason="neither DALI nor FFCV is installed")
def test_dali_and_ffcv_rows_run_where_installed(tmp_path):
    data = image_folder(tmp_path / "data", n=16)
    res = bench_loaders.run(data, batch_size=2, image_size=32, workers=1, batches=1, rounds=1,
                            backends=("dali", "ffcv"), work_dir=tmp_path, log=lambda *a: None)
    names = {r["pipeline"] for r in res["rows"]}
    for lib, backend, rows in (("nvidia.dali", "dali", {"dali loader (2 views + boxes)", "DALI stock 1-view RRC"}),
                               ("ffcv", "ffcv", {"ffcv loader (2 views + boxes)", "FFCV stock 1-view RRC"})):
        if importlib.util.find_spec(lib) is not None and backend not in res["skipped"]:
            assert rows <= names
    assert all(r["images_per_s"] > 0 for r in res["rows"])


def test_chart_draws_partial_results(tmp_path):
    result = {"mode": "smoke", "machine": {"cpu_count": 2}, "sections": {
        "end_to_end": {"rows": [{"backend": "torch", "wait_fraction": 0.4}]}}}
    path = chart.draw(result, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_photo_set_is_imagenet_sized_jpegs_made_deterministically(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image
    from benchmarks.photos import ensure_photos
    a = ensure_photos(6, seed=1, root=tmp_path / "a")
    b = ensure_photos(6, seed=1, root=tmp_path / "b")
    files = sorted(a.glob("*.jpg"))
    assert len(files) == 6
    for f in files:
        with Image.open(f) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            w, h = img.size
            assert 320 <= min(w, h) <= 510 and max(w, h) <= 510 and max(w, h) >= 490
        assert f.read_bytes() == (b / f.name).read_bytes()
    sizes = {Image.open(f).size for f in files}
    assert len(sizes) > 1                                   # shapes vary as ImageNet's do
    assert ensure_photos(6, seed=1, root=tmp_path / "a") == a  # reused, not regenerated


def test_methods_benchmark_gives_each_method_its_own_views():
    from benchmarks import bench_methods
    result = bench_methods.run(image_size=64, batch_size=2, iters=1, precision="fp32",
                               methods=["pixpro", "loca", "rotation"])
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["pixpro"]["step_time_vs_pixpro"] == 1.0
    assert rows["loca"]["arch"] == "vit_tiny_patch16" and rows["rotation"]["arch"] == "resnet18"
    assert all(r["gflops_per_image"] > 0 and r["images_per_sec"] > 0 for r in rows.values())
    # FLOP rate and MFU: FLOPs per image x images/s, over a matmul in the step's precision
    assert result["matmul_precision"] == "fp32" and result["matmul_flops_per_sec"] > 0
    for r in rows.values():
        assert r["tflops_per_sec"] * 1e12 == pytest.approx(r["gflops_per_image"] * 1e9 * r["images_per_sec"])
        assert r["mfu"] == pytest.approx(r["tflops_per_sec"] * 1e12 / result["matmul_flops_per_sec"])
        assert 0 < r["mfu"] < 1


def test_resample_benchmark_times_each_step_beside_what_it_replaced(tmp_path, two_threads):
    from benchmarks import bench_resample
    data = image_folder(tmp_path / "data", n=4)
    res = bench_resample.run(data, n_images=4, image_size=32, iters=1)
    assert torch.get_num_threads() == 2  # it times on one thread and gives the count back
    assert res["images"] == 4 and res["views"] == 8  # byol: two views an image
    by_step = {}
    for r in res["rows"]:
        by_step.setdefault(r["step"], []).append(r)
        assert r["ms_each"] > 0
    assert set(by_step) == {"crop + resize", "JPEG decode to array"}
    for rows in by_step.values():
        assert rows[0]["vs_first"] == 1 and len(rows) >= 2


def test_colour_benchmark_times_the_fused_pass_beside_tensor_ops_and_its_parts(tmp_path, two_threads):
    from benchmarks import bench_colour
    data = image_folder(tmp_path / "data", n=6)
    res = bench_colour.run(data, n_images=6, image_size=32, iters=1)
    assert torch.get_num_threads() == 2
    views = {}
    for r in res["rows"]:
        views.setdefault(r["view"], []).append(r)
        assert r["ms_per_view"] > 0
    assert set(views) == {0, 1}  # byol: two views
    for rows in views.values():
        names = [r["implementation"] for r in rows]
        assert names[0] == "fused numba pass" and rows[0]["vs_fused"] == 1
        assert {"tensor ops (torch engine)", "fused, no blur", "fused, no blur, no jitter"} <= set(names)
        assert rows[0]["drawn"].endswith("of 6")


def test_loca_position_benchmark_matches_patches_and_trains_the_head(cache):
    from benchmarks import loca_position
    res = loca_position.run(image_size=64, scenes=16, batch_size=8, head_steps=3, log_every=2, cache=cache)
    rows = {(r["colour"], r["features"]): r for r in res["matching"]}
    assert set(rows) == {(c, f) for c in ("off", "on") for f in ("pixels", "random ViT tokens")}
    plain = rows[("off", "pixels")]
    assert plain["chance"] == 1 / 16 and plain["valid_patches"] > 0
    assert plain["exact"] > 3 * plain["chance"] and plain["within_one_patch"] >= plain["exact"]
    assert [r["steps"] for r in res["head"]] == [2, 3]
    for r in res["head"]:
        assert 0 <= r["accuracy"] <= 1 and abs(r["loss"] - r["chance_loss"]) < 1.5
    with pytest.raises(ValueError, match="multiple of 16"):
        loca_position.run(image_size=100, cache=cache)


class _Parsed(Exception):
    pass


def test_every_gpu_plan_part_parses_with_its_benchmark(monkeypatch, tmp_path):
    """The prepared GPU commands stay valid as the benchmarks' flags change: each part's
    arguments go through its module's own parser (stopped right after parsing)."""
    import argparse
    import importlib
    from benchmarks import gpu_plan
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    parts = gpu_plan.gpu_parts("cuda")
    assert len({p.name for p in parts}) == len(parts)
    for part in parts:
        module = importlib.import_module(f"benchmarks.{part.module}")
        with pytest.raises(_Parsed) as parsed:
            module.main([*gpu_plan.command(part, tmp_path)[3:]])
        ns = parsed.value.args[0]
        assert ns.device == "cuda" and ns.out == str(tmp_path / part.name)
        if getattr(ns, "only", None):
            assert set(ns.only.split(",")) <= set(bench_step.LEVERS)
    # enough scenes for the torch loader's warm-up and timed batches, however many cores
    for cores in ("2", "16", "40"):
        monkeypatch.setattr(gpu_plan, "_workers", lambda: cores)
        part = next(p for p in gpu_plan.gpu_parts("cuda") if p.name == "torch_loader")
        with pytest.raises(_Parsed) as parsed:
            importlib.import_module("benchmarks.bench_torch_loader").main([*gpu_plan.command(part, tmp_path)[3:]])
        ns = parsed.value.args[0]
        timed = bench_torch_loader.timed_batches(ns.batches, ns.workers)
        assert timed >= 4 * ns.workers
        assert ns.workers == int(cores) and ns.images >= (timed + 2 * ns.workers + 2) * ns.batch_size


# -- the command line -------------------------------------------------------------------------

def test_command_line_lists_each_benchmark_once_and_the_tools_apart(capsys):
    from benchmarks import __main__ as cli
    for argv in ([], ["list"], ["--help"]):
        assert cli.main(argv) is None
        out = capsys.readouterr().out
        benchmarks_part, tools_part = out.split("evaluations and tools:")
        for name in cli.BENCHMARKS:
            assert f"\n  {name} " in benchmarks_part
        for name in ("quality", "loca_position", "gpu_plan"):
            assert f"\n  {name} " in tools_part and f"\n  {name} " not in benchmarks_part
    # every bench_ module is listed; the helpers are not listed as benchmarks
    modules = {entry[0] for entry in cli.BENCHMARKS.values()}
    assert {p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")} <= modules
    assert not {"quality", "loca_position", "photos", "chart", "common", "baseline_loader", "gpu_plan"} & modules


def test_command_line_runs_one_benchmark_by_name(monkeypatch, capsys):
    from benchmarks import __main__ as cli
    from benchmarks import suite
    calls = []
    monkeypatch.setattr(bench_step, "main", lambda argv: calls.append(("step", argv)) or "ran")
    monkeypatch.setattr(suite, "run", lambda mode, out, *a, **k: calls.append(("suite", mode, out)))
    assert cli.main(["step", "--iters", "1"]) == "ran"
    cli.main(["bench_step"])
    cli.main(["suite", "--smoke", "--out", "o"])
    cli.main(["--quick"])   # options alone: the suite, as before
    cli.main(["suite"])
    assert calls == [("step", ["--iters", "1"]), ("step", []), ("suite", "smoke", "o"),
                     ("suite", "quick", "bench_out"), ("suite", "full", "bench_out")]
    with pytest.raises(SystemExit) as stop:
        cli.main(["no_such_benchmark"])
    assert stop.value.code == 2 and "unknown benchmark 'no_such_benchmark'" in capsys.readouterr().err


def test_shared_options_keep_each_benchmarks_defaults(monkeypatch):
    """The shared flags come from common.add_shared_options, each with the default the
    benchmark had before; options a benchmark does not take are not added."""
    import argparse
    import importlib
    from benchmarks.common import add_shared_options, default_device
    ap = add_shared_options(argparse.ArgumentParser(), batch_size=8, rounds=2, out="o", helps={"rounds": "processes"})
    ns = ap.parse_args([])
    assert vars(ns) == {"batch_size": 8, "rounds": 2, "out": "o"}
    assert "processes (default: 2)" in ap.format_help()
    assert ap.parse_args(["--batch-size", "3"]).batch_size == 3
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    gpu = default_device()
    expected = {
        "bench_attention": dict(batch_size=32, device=gpu, threads=None, out="bench_out"),
        "bench_end_to_end": dict(batch_size=32, image_size=128, device="cpu", out="bench_out"),
        "bench_epoch_turn": dict(batch_size=16, image_size=224, device="cpu", rounds=2, out="bench_out"),
        "bench_hugepages": dict(batch_size=32, image_size=128, rounds=3, threads=None, out="bench_out"),
        "bench_loaders": dict(batch_size=32, image_size=224, device="cpu", rounds=2, out="bench_out"),
        "bench_loss": dict(device=gpu, out="bench_out"),
        "bench_methods": dict(batch_size=32, image_size=64, device=gpu, out="bench_out"),
        "bench_peers": dict(batch_size=32, image_size=64, device="cpu", out="bench_out"),
        "bench_pretext": dict(batch_size=32, image_size=64, device=gpu, out="bench_out/pretext.json"),
        "bench_resample": dict(image_size=224, out="bench_out"),
        "bench_colour": dict(image_size=224, out="bench_out"),
        "bench_step": dict(batch_size=32, image_size=64, device="cpu", out="bench_out"),
        "bench_torch_loader": dict(batch_size=64, image_size=224, device="cpu", rounds=3, out="bench_out"),
        "quality": dict(batch_size=32, image_size=64, device="cpu", threads=None, out="bench_out/quality"),
        "loca_position": dict(batch_size=32, image_size=128, out="bench_out/loca_position"),
        "gpu_plan": dict(device="cuda", out="gpu_out"),
    }
    for module, defaults in expected.items():
        with pytest.raises(_Parsed) as parsed:
            importlib.import_module(f"benchmarks.{module}").main([])
        ns = vars(parsed.value.args[0])
        assert {k: ns[k] for k in defaults} == defaults, module
        shared = {"batch_size", "image_size", "device", "rounds", "threads", "out"}
        assert shared & set(ns) == set(defaults), module


def test_gpu_plan_runs_on_past_a_failed_a_timed_out_and_a_skipped_part(tmp_path):
    import json
    from benchmarks.gpu_plan import Part, run_plan, select, gpu_parts
    parts = [Part("bad_flag", "gpu_plan", ("--no-such-flag",), 120),
             Part("too_slow", "bench_step", ("--iters", "1"), 1),
             Part("no_library", "gpu_plan", ("--list",), 120, needs=("no_such_library_for_this_test",)),
             Part("fine", "gpu_plan", ("--list", "--parts", "methods"), 120)]
    lines = []
    result = run_plan(parts, tmp_path, log=lines.append)
    status = {r["part"]: r for r in result["parts"]}
    assert status["bad_flag"]["status"] == "failed" and status["bad_flag"]["returncode"] == 2
    assert "--no-such-flag" in status["bad_flag"]["output_tail"]
    assert status["too_slow"]["status"] == "timed out" and status["too_slow"]["seconds"] < 30
    assert status["no_library"]["status"] == "skipped" and "no_such_library_for_this_test" in status["no_library"]["reason"]
    assert status["fine"]["status"] == "ok" and "bench_methods" in status["fine"]["output_tail"]
    saved = json.loads((tmp_path / "gpu_plan.json").read_text())
    assert [r["part"] for r in saved["parts"]] == ["bad_flag", "too_slow", "no_library", "fine"]
    with pytest.raises(SystemExit, match="unknown part"):
        select(gpu_parts(), "methods,step_lever")


def test_gpu_plan_budget_cuts_the_last_limit_and_skips_what_no_longer_fits(tmp_path, monkeypatch):
    from benchmarks import gpu_plan
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]
    monkeypatch.setattr(gpu_plan, "command", lambda part, out: sleeper)
    monkeypatch.setattr(gpu_plan, "MIN_PART_S", 1)
    parts = [gpu_plan.Part("first", "none", (), 2), gpu_plan.Part("cut", "none", (), 120),
             gpu_plan.Part("late", "none", (), 120)]
    t0 = time.perf_counter()
    result = gpu_plan.run_plan(parts, tmp_path, log=lambda *a: None, budget_s=4.5)
    status = {r["part"]: r for r in result["parts"]}
    assert status["first"]["status"] == "timed out" and status["first"]["timeout_s"] == 2
    assert status["cut"]["status"] == "timed out" and status["cut"]["timeout_s"] in (1, 2)   # what was left
    assert status["late"]["status"] == "skipped" and "budget left" in status["late"]["reason"]
    assert time.perf_counter() - t0 < 15


def _part_with_a_child(pid_file: Path) -> str:
    """A script standing in for a part: it starts a child that does not share its output (as
    loader or compile workers may), writes the child's pid, says 'started' and sleeps."""
    return ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
            "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n")


def _ended(pid: int, wait_s: float = 5.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie, where nothing reaps orphans) within ``wait_s``."""
    for _ in range(int(wait_s / 0.1)):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


def test_gpu_plan_kills_a_timed_out_part_with_its_children(tmp_path):
    """A part's own workers (loader, compiler) die with it: none keeps running or holds the output open."""
    from benchmarks.gpu_plan import run_with_limit
    pid_file = tmp_path / "child.pid"
    output, rc = run_with_limit([sys.executable, "-c", _part_with_a_child(pid_file)], timeout_s=3)
    assert rc is None and "started" in output
    child = int(pid_file.read_text())
    assert _ended(child), f"the part's child process {child} outlived it"


def test_gpu_plan_stopped_by_sigterm_kills_the_running_part_and_keeps_the_record(tmp_path):
    """A job limit that stops the plan (SIGTERM) leaves no part running on the device."""
    import signal
    pid_file, out = tmp_path / "child.pid", tmp_path / "out"
    sleeper = _part_with_a_child(pid_file)
    plan = ("import sys\n"
            "from benchmarks import gpu_plan\n"
            "gpu_plan.gpu_parts = lambda device='cuda': [gpu_plan.Part('sleeper', 'none', (), 120)]\n"
            f"gpu_plan.command = lambda part, out: [sys.executable, '-c', {sleeper!r}]\n"
            f"gpu_plan.main(['--out', {str(out)!r}])\n")
    proc = subprocess.Popen([sys.executable, "-c", plan], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"the part never started: {proc.communicate()}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped" in err and "gpu_plan.json" in err
    record = json.loads((out / "gpu_plan.json").read_text())["parts"]
    assert [(r["part"], r["status"]) for r in record] == [("sleeper", "interrupted")]
    child = int(pid_file.read_text())
    assert _ended(child), f"the part's child process {child} outlived the plan"


def test_bench_attention_times_both_kernels_side_by_side(tmp_path):
    from benchmarks import bench_attention
    result = bench_attention.main(["--image-sizes", "32", "--precisions", "fp32,fp32", "--batch-size", "2",
                                   "--iters", "1", "--device", "cpu", "--out", str(tmp_path)])
    [row] = result["rows"]                      # a precision asked twice is timed once
    assert (row["arch"], row["image_size"], row["tokens"], row["precision"]) == ("vit_tiny_patch16", 32, 4, "fp32")
    assert row["auto_s"] > 0 and row["math_s"] > 0
    assert row["math_speedup"] == pytest.approx(row["auto_s"] / row["math_s"])
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved["rows"] == result["rows"] and "machine" in saved


def test_bench_attention_compile_adds_a_compiled_step_per_kernel(tmp_path, monkeypatch):
    """With --compile every kernel is timed eager and compiled; each variant gets the config
    fields that select it, and its speedup is the eager auto step's seconds over its own."""
    import time
    from benchmarks import bench_attention
    asked = {}
    cost = {("auto", False): 0.004, ("math", False): 0.003, ("auto", True): 0.002, ("math", True): 0.001}

    def fake_step(method, arch, size, batch, device, precision, vit_arch, attention, compile=False):
        asked[(attention, compile)] = (method, size, precision)
        return lambda: time.sleep(cost[(attention, compile)])

    monkeypatch.setattr(bench_attention, "method_step", fake_step)
    result = bench_attention.main(["--image-sizes", "32", "--precisions", "fp32", "--iters", "3", "--device", "cpu",
                                   "--compile", "--out", str(tmp_path)])
    assert set(asked) == set(cost) and set(asked.values()) == {("loca", 32, "fp32")}
    [row] = result["rows"]
    assert result["variants"] == ["auto", "math", "auto_compiled", "math_compiled"]
    for name in result["variants"][1:]:
        assert row[f"{name}_speedup"] == pytest.approx(row["auto_s"] / row[f"{name}_s"])
    assert row["auto_s"] > row["math_compiled_s"]   # 4 ms against 1 ms a step
    assert "math_compiled_speedup" in bench_attention.table(result)


def test_bench_hugepages_runs_each_mode_in_its_own_process_with_its_tunable(tmp_path, monkeypatch):
    """Each mode's child process gets the glibc tunable of its mode (and keeps the user's
    other tunables); the child's own measurement counts page faults; rows keep the modes' order."""
    from benchmarks import bench_hugepages
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0")
    seen = []
    real_run = bench_hugepages.subprocess.run

    def spy(cmd, *args, **kw):
        if "--child" in cmd:
            seen.append(kw["env"]["GLIBC_TUNABLES"])
        return real_run(cmd, *args, **kw)

    monkeypatch.setattr(bench_hugepages.subprocess, "run", spy)
    result = bench_hugepages.main(["--arch", "resnet18", "--image-size", "32", "--batch-size", "2", "--iters", "1",
                                   "--warmup", "1", "--precision", "fp32", "--threads", "1", "--rounds", "1",
                                   "--out", str(tmp_path)])
    assert seen == ["glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"]
    assert [r["mode"] for r in result["rows"]] == list(bench_hugepages.MODES)
    assert result["rows"][0]["faults_per_step"] > 0     # the default malloc faults pages in at every step
    for row in result["rows"]:
        assert row["step_s"] > 0 and row["faults_per_step"] >= 0
        assert row["speedup"] == pytest.approx(result["rows"][0]["step_s"] / row["step_s"])
    assert json.loads((tmp_path / "hugepages.json").read_text())["rows"] == result["rows"]
