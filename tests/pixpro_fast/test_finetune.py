"""Fine-tuning protocol: label subsets, what each stage trains, baseline = stage 2 alone, bad input."""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pixpro_fast import finetune, probe_encoders
from pixpro_fast.cli import main as cli_main
from pixpro_fast.encoder import build_encoder


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def image_folder(root, counts: dict[str, int], size=(24, 28)):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


class MemorySplit:
    def __init__(self, n=4, size=32, classes=2, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.images = (torch.rand(n, size, size, 3, generator=gen) * 255).byte()
        self.labels = torch.arange(n) % classes

    def __len__(self):
        return len(self.labels)

    def batch(self, idx):
        return self.images[idx], self.labels[idx]


def tiny_net(seed=0):
    task = finetune.Task("classify", ("a", "b"), None, None)
    return finetune.build_network(probe_encoders.random_encoder("resnet18", seed), task, 16, 32, seed)


def test_label_subset_is_stratified_reproducible_and_keeps_every_class():
    labels = [0] * 40 + [1] * 20 + [2] * 10 + [3] * 1
    a = finetune.stratified_subset(labels, 0.25, seed=3)
    assert a == finetune.stratified_subset(labels, 0.25, seed=3)
    assert a != finetune.stratified_subset(labels, 0.25, seed=4)
    assert a == sorted(set(a))
    assert Counter(labels[i] for i in a) == {0: 10, 1: 5, 2: 2, 3: 1}   # round(0.25 n), at least one
    assert finetune.stratified_subset(labels, 1.0, seed=0) == list(range(len(labels)))


def test_folder_task_records_the_drawn_val_files_and_label_subset(tmp_path):
    root = image_folder(tmp_path / "data", {"cat": 10, "dog": 5})
    task = finetune.folder_task(root, 32, label_fraction=0.5, seed=1, val_fraction=0.2)
    val_files, train_files = task.record["val"]["files"], task.record["label_subset"]["files"]
    assert Counter(f.split("/")[0] for f in val_files) == {"cat": 2, "dog": 1}
    assert Counter(f.split("/")[0] for f in train_files) == {"cat": 4, "dog": 2}
    assert not set(val_files) & set(train_files)
    again = finetune.folder_task(root, 32, label_fraction=0.5, seed=1, val_fraction=0.2)
    assert again.record == task.record
    images, labels = task.train.batch([0, 1])
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.uint8 and labels.tolist() == [0, 0]


def test_head_stage_leaves_the_encoder_unchanged_and_finetune_changes_it():
    net, train = tiny_net(), MemorySplit()
    before = copy.deepcopy(net.state_dict())
    cfg = finetune.FinetuneConfig(batch_size=2)
    finetune.train_stage(net, train, finetune.Stage("head", 1e-2, 1, True), 2, cfg.weight_decay, 0)
    after = net.state_dict()
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)      # weights and BatchNorm buffers
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    frozen = copy.deepcopy(after)
    finetune.train_stage(net, train, finetune.Stage("finetune", 1e-3, 1, False), 2, cfg.weight_decay, 0)
    assert any(not torch.equal(frozen[k], net.state_dict()[k]) for k in encoder_keys if "weight" in k)


def test_supervised_baseline_is_stage_two_alone_from_the_same_random_weights():
    cfg = finetune.FinetuneConfig(batch_size=2, scratch_epochs=1, head_lr=1e-3)
    scratch, staged = tiny_net(), tiny_net()
    assert all(torch.equal(v, staged.state_dict()[k]) for k, v in scratch.state_dict().items())
    train = MemorySplit()
    finetune.run_protocol(scratch, train, cfg, pretrained=False)
    finetune.run_protocol(staged, train, dataclasses.replace(cfg, head_epochs=0, finetune_lr=cfg.head_lr,
                                                             finetune_epochs=cfg.scratch_epochs), pretrained=True)
    b = staged.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in scratch.state_dict().items())
    assert [s.name for s in finetune.protocol_stages(cfg, False)] == ["scratch"]
    assert [(s.name, s.freeze_encoder) for s in finetune.protocol_stages(cfg, True)] == [("head", True),
                                                                                         ("finetune", False)]


def test_command_random_init_equals_finetune_of_the_same_random_checkpoint(tmp_path):
    """End to end: --random-init and a checkpoint of the same random weights with the head
    stage off and the fine-tune stage at the baseline's rate export the same encoder."""
    from safetensors.torch import load_file
    root = image_folder(tmp_path / "data", {"a": 3, "b": 3})
    enc = probe_encoders.random_encoder("resnet18", 0)
    torch.save({"model": {f"online.encoder.{k}": v for k, v in enc.state_dict().items()},
                "config": {"arch": "resnet18", "method": "pixpro", "recipe": "byol"}}, tmp_path / "rand.pt")
    common = ["--data", str(root), "--image-size", "32", "--batch-size", "4", "--hidden-dim", "16",
              "--val-fraction", "0.34"]
    assert cli_main(["finetune", "--random-init", "--arch", "resnet18", "--scratch-epochs", "1",
                     "--out", str(tmp_path / "scratch"), *common]) == 0
    assert cli_main(["finetune", "--checkpoint", str(tmp_path / "rand.pt"), "--head-epochs", "0",
                     "--finetune-lr", "3e-4", "--finetune-epochs", "1", "--out", str(tmp_path / "ft"), *common]) == 0
    a, b = load_file(str(tmp_path / "scratch/encoder.safetensors")), load_file(str(tmp_path / "ft/encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], enc.state_dict()["conv1.weight"])
    import json
    result = json.loads((tmp_path / "ft/results.json").read_text())
    assert result["stages"] == [{"name": "finetune", "lr": 3e-4, "epochs": 1, "freeze_encoder": False}]
    assert 0.0 <= result["final"]["top1"] <= 1.0 and result["train_count"] == 4 and result["val_count"] == 2


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    lonely = image_folder(tmp_path / "lonely", {"a": 4, "b": 1})
    path = tmp_path / "r18.pt"
    torch.save({"model": {f"online.encoder.{k}": v for k, v in build_encoder("resnet18").state_dict().items()},
                "config": {"arch": "resnet18"}}, path)
    cases = [
        (["--random-init", "--arch", "resnet18", "--data", str(flat)], "no class sub-folders"),
        (["--random-init", "--arch", "resnet18", "--data", str(lonely)], "class 'b' has no image in the train split"),
        (["--checkpoint", str(path), "--arch", "resnet34", "--data", str(lonely)], "arch mismatch"),
        (["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(lonely)], "checkpoint not found"),
    ]
    for args, message in cases:
        assert cli_main(["finetune", *args, "--image-size", "32", "--out", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert cli_main(["finetune", "--random-init", "--arch", "resnet18", "--head-lr", "0", "--out",
                     str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --head-lr must be positive, got 0.0\n"


class Stop(Exception):
    pass


def test_a_run_stopped_mid_stage_goes_on_exactly():
    cfg = finetune.FinetuneConfig(batch_size=2, head_epochs=1, finetune_epochs=2, head_lr=1e-3, finetune_lr=1e-3)
    train = MemorySplit()
    whole = tiny_net()
    whole_losses = finetune.run_protocol(whole, train, cfg, pretrained=True)
    points = []

    def stop_after_first_finetune_epoch(point):
        points.append(point)
        if point["stage"] == "finetune":
            raise Stop
    with pytest.raises(Stop):
        finetune.run_protocol(tiny_net(), train, cfg, pretrained=True, on_epoch=stop_after_first_finetune_epoch)
    resumed = tiny_net(seed=5)                      # other weights: the resume point's replace them
    losses = finetune.run_protocol(resumed, train, cfg, pretrained=True, resume=points[-1])
    assert losses == whole_losses
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_command_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    import json
    from safetensors.torch import load_file
    root = image_folder(tmp_path / "data", {"a": 3, "b": 3})
    path = tmp_path / "r18.pt"
    torch.save({"model": {f"online.encoder.{k}": v for k, v in build_encoder("resnet18").state_dict().items()},
                "config": {"arch": "resnet18"}}, path)
    args = ["finetune", "--checkpoint", str(path), "--data", str(root), "--image-size", "32", "--batch-size", "4",
            "--hidden-dim", "16", "--val-fraction", "0.34", "--head-epochs", "1", "--finetune-epochs", "1"]
    assert cli_main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert not (tmp_path / "whole" / finetune.STATE_NAME).exists()
    real = finetune.evaluate

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(finetune, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):             # after the head stage's epoch was saved
        cli_main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(finetune, "evaluate", real)
    assert (tmp_path / "cut" / finetune.STATE_NAME).is_file()
    capsys.readouterr()
    assert cli_main([*args, "--head-lr", "1e-3", "--out", str(tmp_path / "cut"), "--resume"]) == 2
    assert "--resume: head_lr was 0.0003 in the saved run, now 0.001" in capsys.readouterr().err
    assert cli_main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    assert (a["losses"], a["metrics_after_stage"]) == (b["losses"], b["metrics_after_stage"])
    ea, eb = (load_file(str(tmp_path / d / "encoder.safetensors")) for d in ("whole", "cut"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert cli_main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 2
    assert "no finetune_state.pt" in capsys.readouterr().err
