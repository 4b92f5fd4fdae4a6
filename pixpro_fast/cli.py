"""Command line: ``train`` (default), ``export``; flags are generated from TrainConfig."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import PRESETS_DIR, ConfigError, TrainConfig, field_type

SUBCOMMANDS = ("train", "export", "eval")
EPILOG = ("Ctrl-C (SIGINT), SIGTERM and SIGUSR1 finish the step in progress, write a checkpoint and exit; "
          "a second signal aborts at once. Exit status: 0 the run ended (schedule or --max-steps done); "
          "2 a bad setting, a refused resume, a diverged run or a full disk; 128 + the signal's number when "
          "stopped by a signal (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1), so a scheduler sees the run as unfinished. "
          "Running the same command again resumes from the newest checkpoint in --out.")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def flag_help(f: dataclasses.Field) -> str:
    """A field's help line: its meaning, default and choices, from its metadata."""
    default = "none" if f.default is None else f.default
    text = f"{f.metadata['help']} (default: {default}"
    if "choices" in f.metadata:
        text += f"; choices: {', '.join(map(str, f.metadata['choices']))}"
    return text + ")"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON file of TrainConfig fields, or a bundled preset name "
                                         f"({', '.join(sorted(p.stem for p in PRESETS_DIR.glob('*.json')))}); "
                                         "flags given here override it; the defaults below are TrainConfig's, "
                                         "a preset may set others")
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        owners = f.metadata.get("methods")
        target = parser
        if owners is not None:  # a method's own settings: listed under it
            if owners not in groups:
                groups[owners] = parser.add_argument_group(f"settings of --method {', '.join(owners)}")
            target = groups[owners]
        flag = flag_name(f.name)
        base = field_type(f)
        if base is bool:
            target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=flag_help(f))
        else:
            target.add_argument(flag, dest=f.name, type=base, default=None, metavar=f.name.upper(),
                                help=flag_help(f))


def error_line(exc: Exception) -> str:
    """One line for a bad setting: the flag, the bad value and what is accepted."""
    if isinstance(exc, ConfigError):
        return f"{flag_name(exc.key)} {exc.detail}" if exc.key else exc.detail
    return str(exc).replace("\n", " ")


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
        ap = _Parser(prog="train.py export",
                     description="Write the online encoder of a checkpoint as a torchvision "
                                 "ResNet state_dict and a Detectron2 pickle.")
        ap.add_argument("--checkpoint", required=True)
        ap.add_argument("--out", required=True, help="output folder")
        args = ap.parse_args(argv)
        from .export import export_checkpoint
        try:
            paths = export_checkpoint(args.checkpoint, args.out)
        except (FileNotFoundError, ValueError, KeyError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(f"wrote {path}")
        return 0
    ap = _Parser(prog="train.py", description="PixPro pretraining. Subcommands: train (default), export, eval "
                                              "(dense linear probe). Every TrainConfig field is a flag.",
                 epilog=EPILOG)
    add_config_flags(ap)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
        from .training import check_sync_bn, resolve_device
        from .engine import dist_info
        _, world_size, local_rank = dist_info()
        check_sync_bn(cfg, resolve_device(cfg.device, local_rank), world_size)   # before any process group
    except (ValueError, FileNotFoundError) as e:
        ap.error(error_line(e))
    from .checkpoint import CheckpointWriteError
    from .engine import AbortRun, NonFiniteLossError, ResumeMismatchError, Trainer
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError) as e:   # ConfigError, a method that cannot be built, --encoder-weights
        ap.error(error_line(e))
    try:
        result = trainer.fit()
    except (NonFiniteLossError, ResumeMismatchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return 2
    except AbortRun as e:
        print("\naborted at once: nothing saved since the last checkpoint", file=sys.stderr)
        return 128 + e.signum
    return 128 + result.signal if result.status == "interrupted" else 0
