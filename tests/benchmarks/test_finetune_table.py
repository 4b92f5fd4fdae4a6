"""The fine-tuning table (benchmarks.finetune_table): its rows follow from the cells it
measured, the gain verdict is over the seeds, and a second run reuses every cell."""
import json

import pytest

from benchmarks import finetune_table
from pixpro_fast import probe


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (see conftest's one_thread)."""


def _cells(values):
    """{fraction: {seed: cell}} from {fraction: [cell per seed]}."""
    return {str(f): {str(s): c for s, c in enumerate(per)} for f, per in values.items()}


def test_rows_hold_means_over_seeds_and_the_gain_over_scratch():
    results = {
        "pixpro": {"kind": "resnet18", "pretrained": True, "seeds": [0, 1],
                   "cells": _cells({0.5: [{"knn": 0.5, "linear": 0.6, "head": 0.7, "finetune": 0.80},
                                          {"knn": 0.7, "linear": 0.6, "head": 0.7, "finetune": 0.82}]})},
        "rotation": {"kind": "resnet18", "pretrained": True, "seeds": [0, 1],
                     "cells": _cells({0.5: [{"knn": 0.5, "linear": 0.5, "head": 0.5, "finetune": 0.50},
                                            {"knn": 0.5, "linear": 0.5, "head": 0.5, "finetune": 0.70}]})},
        "supervised from scratch resnet18": {"kind": "resnet18", "pretrained": False, "seeds": [0, 1],
                                             "cells": _cells({0.5: [{"knn": 0.2, "linear": 0.3, "scratch": 0.60},
                                                                    {"knn": 0.2, "linear": 0.3, "scratch": 0.61}]})},
    }
    rows = finetune_table.build_rows(results, [0.5], {0.5: 10})
    by = {r["method"]: r for r in rows}
    assert by["pixpro"]["k-NN top-1"] == "60.0 +/- 14.1" and by["pixpro"]["labels"] == "0.5 (10)"
    assert by["pixpro"]["fine-tune gain over scratch"] == "+20.5 +/- 0.7"
    assert by["pixpro"]["verdict"] == "better beyond noise"
    assert by["rotation"]["verdict"] == "within noise"          # -0.5 mean, 14 points of seed spread
    scratch = by["supervised from scratch resnet18"]
    assert scratch["fine-tune top-1"] == "60.5 +/- 0.7" and scratch["head-only top-1"] == "-"
    assert "verdict" not in scratch
    judged = results["pixpro"]["verdicts"]["0.5"]
    assert judged == probe.gain_verdict([0.80, 0.82], [0.60, 0.61], metric="top-1",
                                        baseline="supervised from scratch", seeds="seed", more="--seeds 3")
    assert "top-1 points over 2 seeds" in judged["line"]


def test_fractions_are_checked():
    assert finetune_table.parse_fractions("1,0.05,0.05") == [0.05, 1.0]
    for bad in ("0", "1.5", "a", ""):
        with pytest.raises(ValueError, match="--fractions"):
            finetune_table.parse_fractions(bad)


TINY = ["--methods", "pixpro", "--no-reference", "--budget", "0.01", "--scenes", "32", "--batch-size", "16",
        "--image-size", "64", "--proj-hidden-dim", "64", "--workers", "0", "--precision", "fp32",
        "--labelled-scenes", "16", "--val-scenes", "16", "--ft-image-size", "32", "--fractions", "0.2,1",
        "--seeds", "2", "--head-epochs", "1", "--finetune-epochs", "1", "--linear-steps", "20", "--k", "5"]


def test_a_tiny_table_is_written_and_a_second_run_reuses_every_cell(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    out = tmp_path / "ft"
    payload = finetune_table.main([*TINY, "--out", str(out)])
    saved = json.loads((out / "finetune.json").read_text())
    assert (out / "finetune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "finetune.md").read_text()
    assert [r["method"] for r in saved["rows"]] == ["pixpro", "supervised from scratch resnet18"] * 2
    assert saved["finetune"]["scratch_epochs"] == 2                   # head + fine-tune epochs
    counts = saved["counts"]
    assert counts["1.0"] == saved["task"]["train"] and 6 <= counts["0.2"] < counts["1.0"]   # >= 1 a class
    pix, scratch = saved["results"]["pixpro"], saved["results"]["supervised from scratch resnet18"]
    for f in ("0.2", "1.0"):
        for s in ("0", "1"):
            assert set(pix["cells"][f][s]) == {"knn", "linear", "head", "finetune"}
            assert set(scratch["cells"][f][s]) == {"knn", "linear", "scratch"}
        gains = [pix["cells"][f][s]["finetune"] - scratch["cells"][f][s]["scratch"] for s in ("0", "1")]
        assert pix["verdicts"][f]["gain_mean"] == pytest.approx(sum(gains) / 2)
    for row in saved["rows"]:
        assert f"| {row['method']} | {row['arch']} | {row['labels']} |" in table
    assert payload["rows"] == saved["rows"]

    def trained(*a, **k):
        raise AssertionError("a cell was trained again")
    monkeypatch.setattr(finetune_table, "trained_scores", trained)
    again = finetune_table.main([*TINY, "--out", str(out)])
    assert again["rows"] == saved["rows"]


def test_the_quality_command_hands_finetune_over(monkeypatch):
    from benchmarks import quality
    seen = []
    monkeypatch.setattr(finetune_table, "main", lambda argv: seen.append(argv) or {})
    quality.main(["--finetune", "--methods", "pixpro"])
    assert seen == [["--methods", "pixpro"]]


def test_too_few_scenes_for_every_class_is_refused_naming_the_flag(tmp_path, cache, monkeypatch, capsys):
    monkeypatch.setenv("PIXPRO_FAST_CACHE", str(cache))
    with pytest.raises(SystemExit) as e:
        finetune_table.main([*TINY, "--val-scenes", "1", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "raise --val-scenes" in capsys.readouterr().err
