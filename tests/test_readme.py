"""Every command line in the README's bash blocks is accepted as written: its program's
parser takes every flag and value (the run itself is not started: parsing stops it)."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Parsed(Exception):
    """Raised in place of running the command, once its arguments have parsed."""


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip() if line.lstrip().startswith("#") else line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def program_and_args(line: str) -> tuple[str, list[str]] | None:
    """('train', argv), ('benchmarks', argv), ('ffcv_writer', argv) or None (not ours)."""
    words = shlex.split(line.split("&&")[-1])
    for i, word in enumerate(words):
        if word == "train.py":
            return "train", words[i + 1:]
        if word == "-m" and i + 1 < len(words) and words[i + 1] in ("benchmarks", "pipelines.ffcv_writer"):
            return words[i + 1], words[i + 2:]
    return None


COMMANDS = [(line, found) for line in readme_commands() if (found := program_and_args(line))]


def test_the_readme_commands_are_found():
    programs = {found[0] for _, found in COMMANDS}
    assert {"train", "benchmarks", "pipelines.ffcv_writer"} <= programs, programs
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("line,found", COMMANDS, ids=[line[:60] for line, _ in COMMANDS])
def test_a_readme_command_parses_as_written(line, found, monkeypatch, capsys):
    program, argv = found
    if program == "benchmarks" and (not argv or argv == ["step", "--help"]):
        pytest.skip("a listing or help text: nothing to parse")
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        namespace = original(self, args, namespace)
        raise Parsed(self.prog)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    if program == "train":
        from pixpro_fast.cli import main
    elif program == "benchmarks":
        from benchmarks.__main__ import main
    else:
        from pipelines.ffcv_writer import main
    with pytest.raises(Parsed):
        main(argv)
