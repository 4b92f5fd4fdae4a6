"""The method registry and the config's layers: every method's settings are the same from
Python as from the command line, an explicit value wins, a preset combined with a method
says what came from where, and each method trains in a folder of its own."""
import dataclasses
import json

import pytest
import torch

from pixpro_fast.cli import _Parser, add_config_flags, config_from_args
from pixpro_fast.cli import main as cli_main
from pixpro_fast.config import TrainConfig, field_owners
from pixpro_fast.methods import METHODS
from pixpro_fast.training import resolve_sync_bn


def from_command_line(*argv: str) -> TrainConfig:
    parser = _Parser(prog="train.py")
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize("method", list(METHODS))
def test_python_and_the_command_line_give_a_method_the_same_settings(method):
    python, cli = TrainConfig(method=method).validate(), from_command_line("--method", method)
    for f in dataclasses.fields(TrainConfig):
        assert getattr(python, f.name) == getattr(cli, f.name), f.name
    entry = METHODS[method]
    for key, value in entry.defaults.items():     # the entry's reference settings are what both start from
        assert getattr(python, key) == value, key
    assert python.recipe == entry.recipe and python.out == f"runs/{method}"
    assert TrainConfig.from_file(method) == python


def test_an_explicit_value_wins_and_a_changed_method_brings_its_own_reference():
    assert TrainConfig(method="simclr").temperature == 0.1
    assert TrainConfig(method="simclr", temperature=0.5).temperature == 0.5
    assert from_command_line("--method", "simclr", "--temperature", "0.5").temperature == 0.5
    switched = TrainConfig(batch_size=8).replace(method="simclr")
    assert (switched.temperature, switched.base_lr, switched.recipe, switched.batch_size) == (0.1, 0.3, "simclr", 8)
    assert TrainConfig(method="simclr").replace(method="byol").out == "runs/byol"


def test_a_general_preset_with_a_method_says_where_each_value_came_from():
    cfg = from_command_line("--config", "quickstart", "--method", "simclr")
    assert cfg.arch == "resnet18" and cfg.temperature == 0.1 and cfg.weight_decay == 1e-6
    assert cfg.source("arch") == "quickstart" and cfg.source("temperature") == "simclr's defaults"
    assert cfg.source("method") == "the command line" and cfg.out == "runs/quickstart-simclr"
    line = cfg.provenance()
    assert line.startswith("settings: from quickstart: ") and "\n" not in line
    assert "arch (simclr's reference: 'resnet50')" in line and "epochs (simclr's reference: 100)" in line
    assert "temperature" not in line              # simclr's own value, not replaced
    assert TrainConfig(method="simclr").provenance() is None


def test_a_preset_made_for_another_method_is_named_in_one_line(tmp_path, capsys):
    preset = tmp_path / "moco_run.json"
    preset.write_text(json.dumps({"method": "mocov2", "queue_size": 4096}))
    with pytest.raises(SystemExit) as stop:
        cli_main(["--config", str(preset), "--method", "simclr", "--loader", "synthetic"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"train.py: error: queue_size in {preset}: 4096 is a setting of mocov2 only"), err
    assert err.endswith("the preset was made for another method"), err
    with pytest.raises(ValueError, match=f"unknown config key.*in {preset}.*did you mean 'queue_size'"):
        preset.write_text(json.dumps({"queue_sise": 16}))
        TrainConfig.from_file(preset)


def test_every_method_specific_setting_belongs_to_the_methods_that_declare_it():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, entry in METHODS.items():
        assert set(entry.settings) <= names and set(entry.defaults) <= names, name
        for setting in entry.settings:
            assert name in field_owners(setting)
        TrainConfig(method=name).validate()        # its reference settings are valid together
    assert field_owners("queue_size") == ("mocov2",) and field_owners("batch_size") == ()
    with pytest.raises(ValueError, match="queue_size 16 is a setting of mocov2 only; method 'byol'"):
        TrainConfig(method="byol", queue_size=16).validate()


@pytest.mark.parametrize("method", ["pixpro", "simclr", "mocov2", "loca", "rotation"])
def test_batchnorm_sync_follows_the_reference_on_multi_gpu_runs_only(method):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    cfg = TrainConfig(method=method)
    assert resolve_sync_bn(cfg, cuda, 8) == METHODS[method].sync_bn
    assert not resolve_sync_bn(cfg, cpu, 2) and not resolve_sync_bn(cfg, cuda, 1)
    assert not resolve_sync_bn(cfg.replace(sync_bn=False), cuda, 8)
    assert resolve_sync_bn(cfg.replace(sync_bn=True), cuda, 8)
    assert METHODS["pixpro"].sync_bn and not METHODS["mocov2"].sync_bn     # the official PixPro code syncs


def test_an_error_names_where_the_bad_value_was_set(tmp_path, capsys):
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"batch_size": "16"}))
    for argv, expected in (
            (["--config", str(preset)], f"batch_size in {preset}: must be an int, got '16'"),
            (["--config", "quickstart", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
            (["--batch-sise", "16"], "unrecognized arguments: --batch-sise 16; --batch-sise (did you mean "
                                     "--batch-size?)"),
            (["--batch-siz", "16"], "unrecognized arguments: --batch-siz 16; --batch-siz (did you mean "
                                    "--batch-size?)")):   # a shortened flag is not taken for the whole one
        with pytest.raises(SystemExit) as stop:
            cli_main(argv)
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err == f"train.py: error: {expected}", err


def test_help_names_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "export (the encoder of a checkpoint" in out and "eval (dense linear probe" in out
