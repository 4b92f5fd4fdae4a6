"""k-NN and linear classification of frozen pooled features, and ``train.py eval --data``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pixpro_fast import image_probe
from pixpro_fast.cli import main as cli_main


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def reference_knn(train, labels, queries, num_classes, k, temperature):
    """Written from the formula: cosine similarity to every train row, the k largest vote with
    weight exp(sim / T), summed per class, the largest sum wins."""
    preds = []
    for q in queries.tolist():
        sims = []
        for j, t in enumerate(train.tolist()):
            dot = sum(a * b for a, b in zip(q, t))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norm, j))
        sims.sort(reverse=True)
        votes = [0.0] * num_classes
        for sim, j in sims[:k]:
            votes[int(labels[j])] += math.exp(sim / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return preds


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (3, 0.5), (1, 0.07), (50, 1.0)])
def test_knn_equals_a_plain_loop(k, temperature):
    gen = torch.Generator().manual_seed(k)
    train, queries = torch.randn(30, 6, generator=gen), torch.randn(9, 6, generator=gen)
    labels = torch.randint(0, 4, (30,), generator=gen)
    got = image_probe.knn_classify(train, labels, queries, 4, k, temperature, chunk=4)
    assert got.tolist() == reference_knn(train, labels, queries, 4, k, temperature)


def test_knn_weights_close_neighbours_more_than_many_far_ones():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert image_probe.knn_classify(train, labels, query, 2, k=4, temperature=0.07).tolist() == [0]
    assert image_probe.knn_classify(train, labels, query, 2, k=4, temperature=100.0).tolist() == [1]


def test_linear_classifier_folds_the_standardisation_in():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen) * 10 + 3
    y = (x[:, 0] > 3).long()
    linear = image_probe.train_linear(x, y, 2, steps=200, lr=0.05)
    assert (linear(x).argmax(1) == y).double().mean() > 0.95


def test_eval_data_reports_knn_and_linear_top1(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ("red", "blue"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            arr = (rng.random((20, 24, 3)) * 80).astype(np.uint8)
            arr[..., 0 if c == "red" else 2] = 255
            Image.fromarray(arr).save(tmp_path / "data" / c / f"{i}.png")
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--random-init", "--arch", "resnet18", "--compare-colour", "--data",
                     str(tmp_path / "data"), "--val-fraction", "0.25", "--skip-dense", "--image-size", "32",
                     "--steps", "30", "--out", str(out)]) == 0
    assert "k-NN top-1" in capsys.readouterr().out
    payload = json.loads(out.read_text())["image_classification"]
    assert payload["classes"] == ["blue", "red"] and payload["train_count"] == 6 and payload["val_count"] == 2
    by_name = {r["name"]: r for r in payload["results"]}
    assert by_name["pixel colour"]["knn_top1"] == 1.0 and by_name["pixel colour"]["linear_top1"] == 1.0
    assert by_name["resnet18 random init"]["k"] == 20
    assert cli_main(["eval", "--random-init", "--arch", "resnet18", "--data", str(tmp_path / "data" / "red"),
                     "--skip-dense"]) == 2
    assert "no class sub-folders" in capsys.readouterr().err
