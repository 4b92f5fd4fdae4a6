"""Command line: ``train`` (default), ``export``; flags are generated from TrainConfig."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from .config import PRESETS_DIR, TrainConfig

SUBCOMMANDS = ("train", "export", "eval")


def _flag_type(tp):
    """The argparse type for a dataclass field annotation such as ``int | None``."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing})  # annotations are postponed strings
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return base


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file of TrainConfig fields; flags given here override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base = _flag_type(f.type)
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=base, default=None, metavar=f.name.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config (file or bundled preset), else the bundled defaults of --method, then the flags."""
    if args.config:
        cfg = TrainConfig.from_file(args.config)
    elif args.method and (PRESETS_DIR / f"{args.method}.json").is_file():
        cfg = TrainConfig.from_file(args.method)
    else:
        cfg = TrainConfig()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
               if getattr(args, f.name, None) is not None}
    return cfg.replace(**changes)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "train"
    if command == "eval":
        from .probe import eval_command
        return eval_command(argv)
    if command == "export":
        ap = argparse.ArgumentParser(prog="train.py export",
                                     description="Write the online encoder of a checkpoint as a torchvision "
                                                 "ResNet state_dict and a Detectron2 pickle.")
        ap.add_argument("--checkpoint", required=True)
        ap.add_argument("--out", required=True, help="output folder")
        args = ap.parse_args(argv)
        from .export import export_checkpoint
        tv, d2 = export_checkpoint(args.checkpoint, args.out)
        print(f"wrote {tv}\nwrote {d2}")
        return 0
    ap = argparse.ArgumentParser(prog="train.py", description="PixPro pretraining. Subcommands: train (default), "
                                                              "export, eval (dense linear probe). Every TrainConfig "
                                                              "field is a flag.")
    add_config_flags(ap)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    from .engine import AbortRun, NonFiniteLossError, ResumeMismatchError, Trainer
    try:
        result = Trainer(cfg).fit()
    except (NonFiniteLossError, ResumeMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AbortRun:
        print("\naborted at once: nothing saved since the last checkpoint", file=sys.stderr)
        return 130
    return 130 if result.status == "interrupted" else 0
