"""Checkpoints load weights-only on every path: a file that would run code is refused by name
and never runs; the RNG states a checkpoint holds (and those older releases wrote) round-trip."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pixpro_fast import load_encoder
from pixpro_fast.checkpoint import (UnsafeCheckpointError, checkpoint_path, load_checkpoint, rng_state, safe_load,
                                    set_rng_state)
from pixpro_fast.cli import main as cli_main


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path: Path, marker: Path) -> Path:
    """A file shaped like a training checkpoint whose model runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": RunsCode(marker), "config": {"arch": "resnet18"}}, path)
    return path


def one_line_refusal(code: int, err: str, path: Path, marker: Path, progress: tuple[str, ...] = ()) -> None:
    """Exit status 2 and, besides progress lines starting with ``progress``, one line that
    names the file and the object; the file's code never ran."""
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line and not line.startswith(progress or "\0")]
    assert len(lines) == 1 and "refusing to load" in lines[0] and str(path) in lines[0], err
    assert "posix.system" in lines[0] or "os.system" in lines[0], err
    assert not marker.exists(), "the crafted file's code ran"


def test_library_loaders_refuse_a_file_that_runs_code(tmp_path):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / "evil.pt", marker)
    for load in (load_checkpoint, load_encoder, safe_load):
        with pytest.raises(UnsafeCheckpointError, match="refusing to load") as e:
            load(evil)
        assert str(evil) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_resume_from_a_file_that_runs_code_stops_with_one_line(tmp_path, capsys):
    marker, out = tmp_path / "marker", tmp_path / "run"
    evil = crafted(checkpoint_path(out, 1), marker)
    code = cli_main(["--loader", "synthetic", "--arch", "resnet18", "--image-size", "32", "--batch-size", "2",
                     "--max-steps", "1", "--proj-hidden-dim", "16", "--proj-dim", "8", "--no-tensorboard",
                     "--num-workers", "0", "--out", str(out)])
    one_line_refusal(code, capsys.readouterr().err, evil, marker)
    assert evil.exists(), "the file was moved aside as if damaged"


@pytest.mark.parametrize("command", ["export", "eval", "encoder-weights"])
def test_export_eval_and_encoder_weights_refuse_a_file_that_runs_code(tmp_path, capsys, command):
    marker = tmp_path / "marker"
    evil = crafted(tmp_path / "evil.pt", marker)
    argv = {"export": ["export", "--checkpoint", str(evil), "--out", str(tmp_path / "x")],
            "eval": ["eval", "--checkpoint", str(evil)],
            "encoder-weights": ["--encoder-weights", str(evil), "--loader", "synthetic", "--arch", "resnet18",
                                "--out", str(tmp_path / "run")]}[command]
    try:
        code = cli_main(argv)
    except SystemExit as e:        # argparse's error(): one line and status 2
        code = e.code
    one_line_refusal(code, capsys.readouterr().err, evil, marker)
    assert not (tmp_path / "x").exists()


def test_the_quality_benchmark_refuses_a_file_that_runs_code(tmp_path, capsys, cache, monkeypatch):
    from benchmarks import quality
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    marker, out = tmp_path / "marker", tmp_path / "q"
    evil = crafted(checkpoint_path(out / "pretrain" / "rotation", 1), marker)
    with pytest.raises(SystemExit) as e:
        quality.main(["--methods", "rotation", "--no-reference", "--budget", "0.01", "--scenes", "16",
                      "--batch-size", "8", "--image-size", "32", "--workers", "0", "--out", str(out)])
    err = capsys.readouterr().err
    one_line_refusal(e.value.code, err, evil, marker, progress=("==", "no --data given"))


def test_rng_states_round_trip_as_tensors_and_from_the_older_tuple_layout(tmp_path):
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    np.random.standard_normal()    # leaves a cached gaussian in NumPy's state
    state = rng_state()
    expected = (random.random(), np.random.standard_normal(), torch.rand(1))
    older = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    set_rng_state(older)
    expected_older = (random.random(), np.random.standard_normal(), torch.rand(1))
    # both layouts through a file, loaded weights-only
    torch.save({"model": {}, "rng": state}, tmp_path / "new.pt")
    torch.save({"model": {}, "rng": older}, tmp_path / "old.pt")
    for name, want in (("new.pt", expected), ("old.pt", expected_older)):
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        set_rng_state(load_checkpoint(tmp_path / name)["rng"])
        got = (random.random(), np.random.standard_normal(), torch.rand(1))
        assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2]), name
