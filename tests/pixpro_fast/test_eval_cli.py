"""``train.py eval``: settings refused before any probing, every option described."""

import pytest

from pixpro_fast import eval_cli
from pixpro_fast.cli import main as cli_main


@pytest.mark.parametrize("arch, args, message", [
    ("resnet18", ["--layers", "tokens"], "no feature map 'tokens'"),
    ("vit_tiny_patch16", ["--layers", "block99"], "no feature map 'block99'"),
    ("vit_tiny_patch16", ["--image-size", "100", "--label-stride", "4"], "not a multiple of the patch size"),
])
def test_eval_refuses_layers_or_sizes_the_encoder_cannot_give_before_probing(arch, args, message, monkeypatch,
                                                                              capsys):
    def no_probe(cfg):
        raise AssertionError("the probe data was loaded before the settings were checked")
    monkeypatch.setattr(eval_cli, "load_probe_data", no_probe)
    assert cli_main(["eval", "--random-init", "--arch", arch, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_eval_refuses_an_out_that_is_a_folder_before_probing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(eval_cli, "load_probe_data", lambda cfg: pytest.fail("probed before checking --out"))
    with pytest.raises(SystemExit) as stop:
        cli_main(["eval", "--random-init", "--arch", "resnet18", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_eval_help_describes_every_option_with_its_default(capsys):
    import re
    from pixpro_fast.cli import main as cli_main
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    out = capsys.readouterr().out
    options = re.findall(r"^  (--[\w-]+)", out, re.M)
    assert len(options) >= 15 and out.count("(default:") == len(options), out
