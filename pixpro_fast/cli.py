"""Command line: ``train`` (default), ``export``, ``eval``, ``finetune``; flags are generated from TrainConfig."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys

from .config import PRESETS_DIR, ConfigError, TrainConfig, field_owners, field_type

SUBCOMMANDS = ("train", "export", "eval", "finetune")
EPILOG = ("Ctrl-C (SIGINT), SIGTERM and SIGUSR1 finish the step in progress, write a checkpoint and exit; "
          "a second signal aborts at once. Exit status: 0 the run ended (schedule or --max-steps done); "
          "2 a bad setting, a refused resume, a diverged run or a full disk; 128 + the signal's number when "
          "stopped by a signal (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1), so a scheduler sees the run as unfinished. "
          "Running the same command again resumes from the newest checkpoint in --out.")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit status 2; a
    mistyped flag gets the closest one suggested, and a shortened one is mistyped too
    (``--head-epoch`` is not taken for ``--head-epochs``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1) if word.startswith("--") else []
                if close:
                    hints.append(f"{word.split('=')[0]} (did you mean {close[0]}?)")
            if hints:
                message += "; " + ", ".join(hints)
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
                                         "flags given here override it; what neither sets comes from the "
                                         "method's reference settings, then the defaults below")
    groups: dict[tuple, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        owners = field_owners(f.name)
        target = parser
        if owners:  # a method's own settings: listed under it
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


def error_line(exc: Exception, cfg: TrainConfig | None = None) -> str:
    """One line for a bad setting: where it was set (the flag, or the key and its preset file),
    the bad value and what is accepted."""
    if not isinstance(exc, ConfigError):
        return str(exc).replace("\n", " ")
    if not exc.key:
        return exc.detail
    source = exc.source or (cfg.source(exc.key) if cfg is not None else None)
    if source in (None, "the command line", "given", "default"):
        return f"{flag_name(exc.key)} {exc.detail}"
    if source.endswith("'s defaults"):
        return f"{exc.key} (from {source}) {exc.detail}"
    return f"{exc.key} in {source}: {exc.detail}"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The layers --config (a file, a bundled preset or a method's name), then the flags; the
    method's reference settings fill the rest, exactly as ``TrainConfig(**flags)`` does."""
    layers = [TrainConfig.preset_layer(args.config)] if args.config else []
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if flags:
        layers.append(("the command line", flags))
    return TrainConfig.layered(layers).validate()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "train"
    if command == "eval":
        from .eval_cli import eval_command
        return eval_command(argv)
    if command == "finetune":
        from .finetune import finetune_command
        return finetune_command(argv)
    if command == "export":
        ap = _Parser(prog="train.py export",
                     description="Write the online encoder of a checkpoint: encoder.safetensors (its metadata "
                                 "in the header: arch, method, input, mean/std, trained size, the call that "
                                 "builds it), the same tensors as a torchvision or timm state_dict, a "
                                 "Detectron2 pickle for a ResNet, and encoder_info.json. "
                                 "pixpro_fast.load_encoder() reads the folder back.")
        ap.add_argument("--checkpoint", required=True, help="training checkpoint (ckpt_<step>.pt), loaded weights-only")
        ap.add_argument("--out", required=True, help="output folder (created; the files in it are replaced)")
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
    ap = _Parser(prog="train.py", description="Pretraining (PixPro and the other methods of --method). Every "
                                              "TrainConfig field is a flag. Subcommands: train (the default), "
                                              "export (the encoder of a checkpoint, for sharing: train.py export "
                                              "--help), eval (dense linear probe of a checkpoint: train.py eval "
                                              "--help), finetune (supervised evaluation by fine-tuning: "
                                              "train.py finetune --help).",
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
    from .checkpoint import CheckpointWriteError, UnsafeCheckpointError
    from .engine import AbortRun, NonFiniteLossError, ResumeMismatchError, Trainer
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError) as e:   # ConfigError, a method that cannot be built, --encoder-weights
        ap.error(error_line(e, cfg))
    try:
        result = trainer.fit()
    except (NonFiniteLossError, ResumeMismatchError, UnsafeCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return 2
    except AbortRun as e:
        print("\naborted at once: nothing saved since the last checkpoint", file=sys.stderr)
        return 128 + e.signum
    return 128 + result.signal if result.status == "interrupted" else 0
