"""Does pretraining help, and which objective helps most? Pretrain every registered method on
the built-in scenes with the same budget, probe each frozen encoder (dense linear probe,
:mod:`pixpro_fast.probe`) beside a random initialisation of the same encoder, and write one
table: method, encoder, mIoU, pixel accuracy, gain over random init, step cost vs PixPro.

Same budget: every method sees the same images (``--scenes``, ``--batch-size``, the same
number of steps) at the same ``--image-size``; a method whose view plan has views of other
sizes (LOCA's focal queries, SwAV's multi-crop) keeps its plan, scaled by ``--image-size``
(:meth:`pipelines.recipe.ViewSpec.output_size`). Each method starts from its bundled preset
(optimiser, lr, temperatures, ...) with the run length, warmup fraction and encoder set here,
and the changes a few hundred steps on a thousand images need: LARS trust ``--lars-trust``
(the paper's 0.001 leaves the weights at their initialisation), projector hidden widths at
most ``--proj-hidden-dim``, MoCo's queue at most a quarter of the scenes (a 65536-key queue
would hold every image many times over), SwAV's prototypes frozen for the first epoch (its
preset's 313 steps are one ImageNet epoch), and LOCA's query 0 keeping the preset's fraction
of its tokens (70 of 196) on the scaled grid (23 of 64 at 128 px, where 70 would keep them
all). ``--set METHOD.FIELD=VALUE`` changes any other field of one method on top (e.g.
``loca.base_lr=0.004``: LOCA's preset, 1e-3 per 1024 images, is 3e-5 at batch 32; base_lr
counts per 256, so 0.004 gives 5e-4). ResNet methods use ``--arch``; the ViT ones (LOCA)
``--vit-arch``, probed on their final patch tokens (a stride-16 map). Colorization's
encoder takes the L channel: it is probed on the L channel of the probe images, scaled as in
training, beside a random 1-channel encoder.

Step cost: the mean seconds of the training step (forward, backward, optimiser, target
update; waiting for data excluded) over the same steps of every method, after the first few,
divided by PixPro's; PixPro is trained first, as the reference (``--no-reference`` leaves it
out, and the column empty).

``--budget`` scales the pretraining steps (256 at 1.0: 8 epochs of 1024 scenes at batch 32,
64 px) and the probe steps (1000 at 1.0). On a 2-core AMD EPYC with ``--threads 1
--workers 1`` (on two cores shared with other work, two intra-op threads made PixPro's
step 10-20x slower than one), ``--budget 0.5`` takes about 35 minutes for the 14 methods and
``--budget 1`` about 42 minutes (see benchmarks/RESULTS.md); ``--budget 0.01`` on small
scenes and images is the smoke test (seconds per method):

    python -m benchmarks.quality --methods all --threads 1 --workers 1               # --budget 1: about 42 minutes
    python -m benchmarks.quality --methods all --threads 1 --workers 1 --budget 0.5  # about 35 minutes
    python -m benchmarks.quality --methods pixpro,byol,rotation                      # a subset
    python -m benchmarks.quality --methods loca --no-reference --image-size 128      # one method, no PixPro first
    python -m benchmarks.quality --methods simclr --pair-losses all                  # SimCLR with each pair loss
    python -m benchmarks.quality --methods loca --no-reference --image-size 128 --budget 16 --threads 2 --workers 1 \
            --set loca.base_lr=0.004 --set loca.attention=math --set loca.compile=true  # LOCA +5.6 mIoU, ~50 min
    python -m benchmarks.quality --methods loca,colorization --budget 0.01 --scenes 32 --batch-size 16 \
        --probe-image-size 64 --probe-train-images 6 --probe-val-images 4 --proj-hidden-dim 64   # smoke test

SimCLR's pair losses (``pair_loss``: infonce, contrastive, triplet_hard, triplet_all, npair)
are rows of their own: ``--methods simclr:triplet_hard`` (``simclr:infonce`` is ``simclr``), or
``--pair-losses all`` (or a comma list), which adds one ``simclr:LOSS`` row per loss after the
methods. ``--set simclr:contrastive.pair_margin=1.0`` changes a field of one such row.

A method whose training diverges (the engine stops at a non-finite loss or state) is a row
that says so.

Writes quality.json, quality.md and quality.png into --out; method M's pretraining
(checkpoints, metrics.jsonl, step_times.jsonl) goes to --out/pretrain/M (a row M:V to
--out/pretrain/M-V) and is resumed if it is there, and its probe result (probe.json) is
reused when the checkpoint and probe settings match, so a run that was cut off continues
where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pixpro_fast import probe
from pixpro_fast import probe_encoders
from pixpro_fast import probe_data
from pixpro_fast.checkpoint import UnsafeCheckpointError, list_checkpoints
from pixpro_fast.config import TrainConfig, field_optional, field_type
from pixpro_fast.encoder import trunk_shape
from pixpro_fast.engine import NonFiniteLossError, ResumeMismatchError, Trainer
from pixpro_fast.methods import METHODS
from pixpro_fast.pair_losses import PAIR_LOSSES
from pixpro_fast.vit import PATCH

from .common import add_shared_options, markdown_table, write_json

REFERENCE = "pixpro"
# a row METHOD:VARIANT trains METHOD with one config field set to VARIANT: the method, the
# field, its choices; the field's default is the plain METHOD row
VARIANTS = {"simclr": ("pair_loss", PAIR_LOSSES)}
BASE_EPOCHS = 8           # at --budget 1 (x scenes / batch steps per epoch)
BASE_PROBE_STEPS = 1000   # at --budget 1
TIMING_WARMUP = 5         # first steps left out of the step-cost mean (at most half the run)
COLUMNS = ["method", "arch", "mIoU", "pixel accuracy", "gain over random init", "vs probe-seed noise",
           "step cost vs pixpro", "weights turned (deg)"]


# --------------------------------------------------------------------------- arguments

def split_row(name: str) -> tuple[str, dict]:
    """A row name -> (registry method, the config changes of its variant): ``simclr`` ->
    ("simclr", {}), ``simclr:triplet_hard`` -> ("simclr", {"pair_loss": "triplet_hard"})."""
    method, _, variant = name.partition(":")
    return method, ({VARIANTS[method][0]: variant} if variant else {})


def row_folder(name: str) -> str:
    """The --out/pretrain subfolder of a row: its name, ``:`` written ``-``."""
    return name.replace(":", "-")


def _row_name(name: str) -> str:
    """``METHOD`` or ``METHOD:VARIANT`` checked; the variant that is its field's default is
    the plain method's row. A bad one is a ValueError naming it and the choices."""
    method, colon, variant = name.partition(":")
    if not colon:
        return name
    if method not in VARIANTS:
        raise ValueError(f"{name!r} in --methods: only "
                         f"{', '.join(f'{m}:{field.upper()}' for m, (field, _) in VARIANTS.items())} rows have a variant")
    field, choices = VARIANTS[method]
    if variant not in choices:
        raise ValueError(f"{name!r} in --methods: {variant!r} is not a {field} of {method}; "
                         f"choose from {', '.join(choices)}")
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)
    return method if variant == default else name


def parse_pair_losses(spec: str | None) -> list[str]:
    """``--pair-losses``: ``all`` or a comma list of SimCLR pair losses -> their rows
    (``infonce``, the default, is the plain ``simclr`` row)."""
    if not spec:
        return []
    losses = list(PAIR_LOSSES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [x for x in losses if x not in PAIR_LOSSES]
    if bad or not losses:
        raise ValueError(f"unknown pair loss(es) {', '.join(map(repr, bad)) or '(none given)'} in --pair-losses; "
                         f"choose 'all' or from {', '.join(PAIR_LOSSES)}")
    return [_row_name(f"simclr:{x}") for x in losses]


def parse_methods(spec: str, reference: bool = True, pair_losses: str | None = None) -> list[str]:
    """``all`` or a comma list of registry names -> row names, PixPro first (the step-cost
    reference) unless ``reference`` is off. A name may carry a variant, ``simclr:LOSS`` (SimCLR
    with that ``pair_loss``); ``pair_losses`` (``--pair-losses``) adds one such row per loss,
    after the others. An unknown name is a ValueError naming it and the choices."""
    names = list(METHODS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n.partition(":")[0] not in METHODS]
    if bad or not names:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, bad)) or '(none given)'} in --methods; "
                         f"choose 'all' or from {', '.join(METHODS)}")
    names = [_row_name(n) for n in names] + parse_pair_losses(pair_losses)
    names = list(dict.fromkeys(names))
    if not reference:
        return names
    return [REFERENCE] + [n for n in names if n != REFERENCE]


def parse_settings(specs: list[str], methods: list[str]) -> dict[str, dict]:
    """``--set METHOD.FIELD=VALUE`` items -> {method: {field: value}}; the value is read as
    the field's type. A malformed item, a method not in the run or an unknown field is a
    ValueError naming it."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict[str, dict] = {}
    for spec in specs:
        target, sep, text = spec.partition("=")
        method, dot, name = target.partition(".")
        if not sep or not dot or not method or not name:
            raise ValueError(f"--set {spec!r}: expected METHOD.FIELD=VALUE, e.g. loca.base_lr=0.01")
        if method not in methods:
            raise ValueError(f"--set {spec!r}: {method!r} is not one of the methods of this run ({', '.join(methods)})")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            raise ValueError(f"--set {spec!r}: unknown config field {name!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        kind = field_type(fields[name])
        if kind is bool:
            word = text.strip().lower()
            if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"--set {spec!r}: {text!r} is not true or false")
            value = word in ("1", "true", "yes", "on")
        elif text.strip().lower() == "none" and field_optional(fields[name]):
            value = None
        else:
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"--set {spec!r}: {text!r} is not a valid {kind.__name__}") from None
        out.setdefault(method, {})[name] = value
    return out


def epochs_for(budget: float) -> int:
    return max(1, round(BASE_EPOCHS * budget))


def probe_steps_for(budget: float) -> int:
    return max(1, round(BASE_PROBE_STEPS * budget))


def method_config(name: str, args, out: Path) -> TrainConfig:
    """Row ``name``'s config: its method's reference settings with the shared budget, the short-run
    changes of the module docstring and its variant (``simclr:LOSS``: that pair loss);
    pretraining in --out/pretrain/<name, ':' as '-'>."""
    method, variant = split_row(name)
    preset = TrainConfig(method=method)
    epochs = epochs_for(args.budget)
    steps_per_epoch = args.scenes // args.batch_size
    changes = dict(
        method=method, arch=args.vit_arch if METHODS[method].encoder == "vit" else args.arch, image_size=args.image_size,
        batch_size=args.batch_size, epochs=epochs, warmup_epochs=preset.warmup_epochs / preset.epochs * epochs,
        max_steps=None, scenes_images=args.scenes, data=None, loader="torch", lars_trust=args.lars_trust,
        proj_hidden_dim=min(preset.proj_hidden_dim, args.proj_hidden_dim), precision=args.precision,
        num_workers=args.workers, device=args.device, compile=False, log_every=10, ckpt_every=0, keep_ckpts=1,
        tensorboard=False, probe_every=0, resume=True, out=str(out / "pretrain" / row_folder(name)), seed=args.seed,
        **variant)
    if method == "mocov2":
        quarter = max(args.batch_size, args.scenes // 4 // args.batch_size * args.batch_size)
        changes["queue_size"] = min(preset.queue_size, quarter)
    if preset.freeze_prototypes_steps:
        changes["freeze_prototypes_steps"] = min(preset.freeze_prototypes_steps, steps_per_epoch)
    if METHODS[method].encoder == "vit":
        # query 0's kept tokens count at the preset's size (70 of 196): keep the same fraction of
        # the scaled grid, or a smaller query view would keep every token and lose its masking
        scale = (args.image_size // PATCH) ** 2 / (preset.image_size // PATCH) ** 2
        changes["query_keep"] = max(1, round(preset.query_keep * scale))
    return preset.replace(**changes)


# --------------------------------------------------------------------------- pretraining

def step_time_writer(out: Path):
    """An ``on_step`` hook for the engine's trainer that appends each step's time to
    ``out/step_times.jsonl`` as it ends (so a resumed run keeps the times of the steps it keeps)."""
    def write(step: int, seconds: float) -> None:
        with open(out / "step_times.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "seconds": seconds}) + "\n")
    return write


def read_step_times(path: Path, last_step: int) -> dict[int, float]:
    """step -> seconds of the steps up to ``last_step`` (a step redone after a resume: its last time)."""
    times: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:   # a line cut off by a killed run
                continue
            if rec["step"] <= last_step:
                times[rec["step"]] = rec["seconds"]
    return times


def timed_steps(total_steps: int) -> range:
    """The steps whose mean is the step cost: all but the first few (the same for every method)."""
    return range(min(TIMING_WARMUP, total_steps // 2) + 1, total_steps + 1)


def mean_step_seconds(times: dict[int, float], total_steps: int) -> float:
    steps = timed_steps(total_steps)
    missing = [s for s in steps if s not in times]
    if missing:
        raise ValueError(f"no step time recorded for step(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return sum(times[s] for s in steps) / len(steps)


def pretrain(cfg: TrainConfig) -> dict:
    """Train (or resume, or find finished) ``cfg``'s run; its checkpoint, steps and step times,
    or ``diverged``: why the engine stopped it (a non-finite loss or state)."""
    out = Path(cfg.out)
    t0 = time.perf_counter()
    try:
        fit = Trainer(cfg, on_step=step_time_writer(out)).fit()
    except NonFiniteLossError as e:
        return {"diverged": str(e), "seconds_this_run": time.perf_counter() - t0}
    except (UnsafeCheckpointError, ResumeMismatchError) as e:   # a file in --out it must not or cannot resume
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    seconds = time.perf_counter() - t0
    if fit.status not in ("finished", "max_steps"):
        raise SystemExit(f"pretraining of {cfg.method} stopped early ({fit.status}); run again to resume it")
    checkpoint = fit.checkpoint or list_checkpoints(out)[-1]
    times = read_step_times(out / "step_times.jsonl", fit.steps)
    return {"checkpoint": str(checkpoint), "steps": fit.steps, "last_loss": fit.last_loss,
            "seconds_this_run": seconds, "step_seconds": mean_step_seconds(times, fit.steps),
            "timed_steps": [timed_steps(fit.steps)[0], fit.steps]}


# --------------------------------------------------------------------------- probing

def describe(name: str) -> str:
    """A row's description: its method's, with the variant's setting."""
    method, variant = split_row(name)
    return METHODS[method].description + "".join(f"; {k} {v}" for k, v in variant.items())


def encoder_kind(arch: str, method: str) -> str:
    """What a random-init baseline must match: the arch, and the input when it is not RGB."""
    return f"{arch} (L channel)" if METHODS[method].encoder == "resnet_l" else arch


def cached_result(path: Path, key: dict, run) -> dict:
    """``run()``'s result (a dict, or an object with ``to_dict``), stored in ``path`` with
    ``key``; reused while the key is the same, so a run that was cut off continues."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["result"]
    result = run()
    result = result.to_dict() if hasattr(result, "to_dict") else result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result


def probe_layers(encoder, args) -> tuple[str, ...]:
    return probe_encoders.default_layers(encoder, tuple(args.probe_layers.split(",")), tuple(args.vit_probe_layers.split(",")))


# --------------------------------------------------------------------------- the table

def build_rows(methods: list[dict], baselines: dict[str, dict]) -> list[dict]:
    """One row per method: the gain is its mIoU minus its random-init baseline's (points), the
    step cost its mean step seconds over PixPro's, the weights turned the mean angle of its
    encoder's weight tensors from their initialisation (a few degrees: still random)."""
    ref = next((m for m in methods if m["method"] == REFERENCE), {}).get("step_seconds")
    rows = []
    for m in methods:
        if "diverged" in m:
            rows.append({"method": m["method"], "arch": m["kind"], "mIoU": "diverged", "pixel accuracy": "-",
                         "gain over random init": "-", "vs probe-seed noise": "-", "step cost vs pixpro": "-",
                         "weights turned (deg)": "-"})
            continue
        base = baselines[m["kind"]]
        rows.append({"method": m["method"], "arch": m["kind"], "mIoU": round(100 * m["probe"]["miou"], 2),
                     "pixel accuracy": round(100 * m["probe"]["pixel_accuracy"], 2),
                     "gain over random init": round(100 * (m["probe"]["miou"] - base["miou"]), 2),
                     "vs probe-seed noise": seed_noise(m["probe"], base),
                     "step cost vs pixpro": round(m["step_seconds"] / ref, 3) if ref else "-",
                     "weights turned (deg)": round(m["mean_weight_turn_degrees"], 1)})
    return rows


def seed_noise(result: dict, baseline: dict) -> str:
    """Whether a row's gain exceeds the probe-seed noise (:func:`pixpro_fast.probe.gain_verdict`),
    where both it and its baseline were probed with the same several seeds; else '-'."""
    ours, base = (r.get("extra", {}).get("miou_per_seed", []) for r in (result, baseline))
    if len(ours) < 2 or len(ours) != len(base):
        return "-"
    judged = probe.gain_verdict(ours, base)
    return "beyond" if judged["distinguishable"] else "within"


def baseline_rows(baselines: dict[str, dict]) -> list[dict]:
    return [{"method": "random init", "arch": kind, "mIoU": round(100 * b["miou"], 2),
             "pixel accuracy": round(100 * b["pixel_accuracy"], 2), "gain over random init": 0.0,
             "vs probe-seed noise": "-", "step cost vs pixpro": "-", "weights turned (deg)": 0.0}
            for kind, b in baselines.items()]


def header(payload: dict) -> str:
    p, c = payload["probe_config"], payload["pretrain"]
    return (f"Budget {payload['budget']:g}: every method {c['steps']} steps ({c['epochs']} epochs of {c['scenes']} scenes, "
            f"batch {c['batch_size']}) at {c['image_size']} px on {c['arch']} / {c['vit_arch']}, {c['precision']}. "
            f"Probe: {p['train_images']} train / {p['val_images']} val scenes at {p['image_size']} px, "
            f"{p['steps']} steps, {payload.get('probe_seeds', 1)} probe seed(s), ResNets on "
            f"{','.join(payload['probe_layers']['resnet'])}, ViTs on "
            f"{','.join(payload['probe_layers']['vit'])}. Step cost: mean training-step seconds over steps "
            f"{c['timed_steps'][0]}-{c['timed_steps'][1]}, relative to pixpro. Wall time "
            f"{payload['wall_seconds'] / 60:.1f} min ({torch.get_num_threads()} threads).")


def write_outputs(out: Path, payload: dict) -> dict[str, Path]:
    from .chart import draw_quality
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(payload["rows"] + payload["baseline_rows"], COLUMNS)
    md = out / "quality.md"
    md.write_text(header(payload) + "\n\n" + table + "\n")
    return {"json": write_json(out, "quality.json", payload), "md": md,
            "png": draw_quality(payload, out / "quality.png")}


def add_pretrain_options(ap: argparse.ArgumentParser, out: str) -> None:
    """The options of the shared pretraining (every method, the same budget), declared once
    for this table and the fine-tuning table (:mod:`benchmarks.finetune_table`)."""
    ap.add_argument("--methods", "--method", default="all",
                    help=f"'all' (the registry: {', '.join(METHODS)}) or a comma list; pixpro always runs first; "
                         f"simclr:LOSS trains SimCLR with that pair loss ({', '.join(PAIR_LOSSES)})")
    ap.add_argument("--pair-losses", default=None, metavar="LOSSES",
                    help=f"add one simclr row per pair loss: 'all' or a comma list of {', '.join(PAIR_LOSSES)} "
                         "(the same as simclr:LOSS in --methods; infonce is the plain simclr row)")
    ap.add_argument("--no-reference", action="store_true",
                    help="do not train pixpro first (the step-cost column is then empty): a quick run of "
                         "one method, e.g. at another --image-size")
    ap.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                    help="change one config field of one method after the shared budget is applied, e.g. "
                         "loca.base_lr=0.004 (repeatable)")
    ap.add_argument("--budget", type=float, default=1.0,
                    help=f"scales pretraining ({BASE_EPOCHS} epochs at 1) and probe steps ({BASE_PROBE_STEPS} at 1)")
    ap.add_argument("--arch", default="resnet18", help="encoder of the ResNet methods")
    ap.add_argument("--vit-arch", default="vit_tiny_patch16", help="encoder of the ViT methods (loca)")
    add_shared_options(ap, batch_size=32, image_size=64, device="cpu", threads=True, out=out,
                       helps={"image_size": "pretraining image size", "batch_size": "pretraining batch size",
                              "device": "where pretraining and the probes run: cpu or cuda",
                              "out": "output folder",
                              "threads": "torch intra-op threads (default: torch's); 1 on a shared 2-core machine, "
                                         "where a second thread mostly waits for a busy core"})
    ap.add_argument("--scenes", type=int, default=1024, help="built-in scenes used for pretraining")
    ap.add_argument("--lars-trust", type=float, default=0.02,
                    help="LARS trust coefficient of the methods that use LARS (the paper's 0.001 barely moves "
                         "the weights in a few hundred steps)")
    ap.add_argument("--proj-hidden-dim", type=int, default=1024, help="cap on the projector hidden widths")
    ap.add_argument("--precision", default="auto",
                    help="auto (bf16 where native on this device, else fp32), fp32, bf16 or fp16")
    ap.add_argument("--workers", type=int, default=None, help="loader worker processes")
    ap.add_argument("--seed", type=int, default=0, help="seed of pretraining and of the random inits")


def pretrain_configs(ap: argparse.ArgumentParser, args) -> dict[str, TrainConfig]:
    """Row name -> its pretraining config, every one checked before any training; a bad option
    is the parser's error. Sets ``--threads``."""
    try:
        methods = parse_methods(args.methods, reference=not args.no_reference, pair_losses=args.pair_losses)
    except ValueError as e:
        ap.error(str(e))
    if args.budget <= 0:
        ap.error(f"--budget must be positive, got {args.budget}")
    if args.scenes < args.batch_size:
        ap.error(f"--scenes ({args.scenes}) must be at least --batch-size ({args.batch_size})")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        settings = parse_settings(args.set, methods)
        return {m: method_config(m, args, Path(args.out)).replace(**settings.get(m, {})) for m in methods}
    except ValueError as e:
        ap.error(str(e))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--finetune" in argv:
        from . import finetune_table
        return finetune_table.main([a for a in argv if a != "--finetune"])
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--finetune", action="store_true",
                    help="the fine-tuning table instead (python -m benchmarks finetune --help: its options)")
    add_pretrain_options(ap, "bench_out/quality")
    ap.add_argument("--probe-image-size", type=int, default=probe.ProbeConfig.image_size)
    ap.add_argument("--probe-layers", default="layer3,layer4", help="ResNet stages probed, comma-separated")
    ap.add_argument("--vit-probe-layers", default="tokens", help="ViT maps probed (tokens, block1 .. blockN)")
    ap.add_argument("--probe-seeds", type=int, default=1,
                    help="train each probe with this many seeds; with 2 or more, each gain is judged against "
                         "the seed-to-seed spread (the 'vs probe-seed noise' column)")
    ap.add_argument("--probe-train-images", type=int, default=probe.ProbeConfig.train_images)
    ap.add_argument("--probe-val-images", type=int, default=probe.ProbeConfig.val_images)
    args = ap.parse_args(argv)
    if args.probe_seeds < 1:
        ap.error(f"--probe-seeds must be at least 1, got {args.probe_seeds}")
    configs = pretrain_configs(ap, args)
    methods = list(configs)
    out = Path(args.out)
    start = time.perf_counter()
    probe_cfg = probe.ProbeConfig(image_size=args.probe_image_size, layers=tuple(args.probe_layers.split(",")),
                                  steps=probe_steps_for(args.budget), train_images=args.probe_train_images,
                                  val_images=args.probe_val_images, seed=args.seed)
    train = val = None
    results, baselines = [], {}
    for m in methods:
        cfg = configs[m]
        method = cfg.method
        print(f"== {m}: {cfg.arch}, {cfg.epochs} epochs", file=sys.stderr, flush=True)
        run = pretrain(cfg)
        if "diverged" in run:
            print(f"  {m}: diverged ({run['diverged']})", file=sys.stderr, flush=True)
            results.append({"method": m, "arch": cfg.arch, "kind": encoder_kind(cfg.arch, method),
                            "description": describe(m), **run, "config": cfg.to_dict()})
            continue
        pretrained, arch, _ = probe_encoders.encoder_from_checkpoint(run["checkpoint"])
        shape = trunk_shape(pretrained.state_dict(), arch)
        initial = probe_encoders.random_encoder(arch, args.seed, **shape)     # the weights pretraining started from
        turn = probe_encoders.weight_turn(pretrained, initial)
        kind = encoder_kind(arch, method)
        stats = probe_encoders.recipe_stats(cfg)                              # the random init is probed as the pretrained
        enc, base_enc = probe_encoders.probe_ready(pretrained, method, *stats), probe_encoders.probe_ready(initial, method, *stats)
        layers = probe_layers(enc, args)
        key = {"probe_config": asdict(probe_cfg), "layers": list(layers), "checkpoint": run["checkpoint"],
               "probe_seeds": args.probe_seeds}

        def evaluate(encoder, name):
            nonlocal train, val
            if train is None:
                train, val = probe_data.load_probe_data(probe_cfg)
            return lambda: probe.evaluate_encoder(encoder, train, val, probe_cfg, name, layers=layers,
                                                  device=args.device, probe_seeds=args.probe_seeds)
        result = cached_result(Path(cfg.out) / "probe.json", key, evaluate(enc, f"{kind} {m}"))
        if kind not in baselines:
            base_key = {**key, "checkpoint": None, "kind": kind, "shape": shape}
            safe = kind.replace(" ", "_").replace("(", "").replace(")", "")
            baselines[kind] = cached_result(out / "random_init" / f"{safe}.json", base_key,
                                           evaluate(base_enc, f"{kind} random init"))
        print(f"  {m}: mIoU {100 * result['miou']:.2f} (random init {100 * baselines[kind]['miou']:.2f}), "
              f"step {run['step_seconds']:.3f} s, weights turned {sum(turn.values()) / max(len(turn), 1):.1f} deg",
              file=sys.stderr, flush=True)
        results.append({"method": m, "arch": arch, "kind": kind, "description": describe(m), **run,
                        "weight_turn_degrees": turn,
                        "mean_weight_turn_degrees": sum(turn.values()) / max(len(turn), 1),
                        "config": cfg.to_dict(), "probe": result})
    ref_cfg = configs[methods[0]]
    total_steps = ref_cfg.epochs * (args.scenes // args.batch_size)
    payload = {"budget": args.budget, "methods": methods, "wall_seconds": time.perf_counter() - start,
               "pretrain": {"steps": total_steps, "epochs": ref_cfg.epochs, "scenes": args.scenes,
                            "batch_size": args.batch_size, "image_size": args.image_size, "arch": args.arch,
                            "vit_arch": args.vit_arch, "precision": args.precision,
                            "timed_steps": [timed_steps(total_steps)[0], total_steps]},
               "probe_config": asdict(probe_cfg), "probe_seeds": args.probe_seeds, "device": args.device,
               "probe_layers": {"resnet": args.probe_layers.split(","), "vit": args.vit_probe_layers.split(",")},
               "rows": build_rows(results, baselines), "baseline_rows": baseline_rows(baselines),
               "baselines": baselines, "results": results}
    paths = write_outputs(out, payload)
    print(header(payload) + "\n\n" + markdown_table(payload["rows"] + payload["baseline_rows"], COLUMNS))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return payload


if __name__ == "__main__":
    main()
