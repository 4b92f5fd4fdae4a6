"""The training configuration: one flat dataclass, loadable from JSON, overridable from the
command line, checked on load (unknown keys and bad values are errors that name them).

Each field carries its own description in ``dataclasses.field(metadata=...)``: ``help``
(the meaning, shown by ``--help``), ``choices`` and ``min``/``max`` (checked by
:meth:`TrainConfig.validate`), and ``resume``: ``"refuse"`` when a checkpoint written under
another value cannot be continued (shapes, data order or schedule differ), ``"apply"`` when
the new value simply takes effect on resume (workers, logging, output, ...).

A config is built in layers: a preset file, then flags (or keyword arguments); every field
no layer names comes from the method's registry entry (its reference settings), else from
the field's default, so ``TrainConfig(method="simclr")`` and ``train.py --method simclr``
are the same run and an explicit value always wins. :meth:`TrainConfig.provenance` says
which value came from where. Which fields belong to which method is the methods' own
declaration (``settings`` of their entries): setting one away from its default for a
method that does not read it is an error (it would do nothing), and ``--help`` lists them
under their method.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from pipelines import BACKENDS as LOADERS
from pipelines import DEFAULT_MAX_PIXELS
from pipelines.recipe import PRESETS as RECIPES
from pipelines.recipe import get_recipe

from .encoder import ARCHS as RESNET_ARCHS
from .methods import METHODS, method_entry, methods_reading
from .methods.colorization import MODES as COLORIZATION_MODES
from .methods.colorization import NUM_BINS as COLORIZATION_BINS
from .methods.denoising_ae import NOISES as DENOISING_NOISES
from .methods.relative_location import COLOUR_MODES as RELATIVE_LOCATION_COLOURS
from .optim import LR_SCHEDULES, RETIRED_LR_SCHEDULES
from .vit import VIT_ARCHS

ARCHS = tuple(RESNET_ARCHS) + tuple(VIT_ARCHS)
from .pair_losses import MARGIN_LOSSES, PAIR_LOSSES
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTION_KERNELS = ("auto", "math")
PRESETS_DIR = Path(__file__).parent / "configs"
DEFAULT_METHOD = "pixpro"


def _opt(default, help: str, resume: str = "refuse", choices=None, min=None, max=None):
    """A TrainConfig field with its description (see the module docstring)."""
    meta = {"help": help, "resume": resume}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A bad value of one field: ``key`` names it, ``detail`` says what is wrong and what is accepted."""

    def __init__(self, key: str | None, detail: str, source: str | None = None):
        self.key, self.detail = key, detail
        self.source = source    # where the value came from (a preset file, the command line, ...), when known
        super().__init__(f"invalid config: {key} {detail}" if key else f"invalid config: {detail}")


NOT_PRESETS = ("given", "the command line")


def default_out(method: str, labels: list[str]) -> str:
    """``runs/METHOD``, or ``runs/PRESET-METHOD`` for a run from a preset file: each method and
    preset trains in a folder of its own, so one never resumes (or stops on) another's run."""
    presets = [Path(label).stem for label in labels if label not in NOT_PRESETS and not label.endswith("'s defaults")]
    return f"runs/{presets[0]}-{method}" if presets else f"runs/{method}"


@dataclass(init=False)
class TrainConfig:
    """``TrainConfig(**fields)``: what is not given comes from the method's reference settings
    (its registry entry), then from the field defaults below."""
    # data
    data: str | None = _opt(None, "image folder (or a .beton file for --loader ffcv); none: the built-in scenes")
    loader: str = _opt("torch", "data loader backend", choices=LOADERS)
    recipe: str = _opt("byol", "augmentation recipe of the two views", choices=RECIPES)
    image_size: int = _opt(224, "side of each training view in pixels (a multiple of 32)", min=32, max=4096)
    num_workers: int | None = _opt(None, "CPU workers decoding in parallel (processes for torch, threads for "
                                   "dali and ffcv); none: one per core; 0: no pool", "apply", min=0, max=1024)
    on_corrupt: str = _opt("skip", "an unreadable image: skip (counted, replaced) or error (stop)", "apply",
                           choices=("skip", "error"))
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "an image whose header declares more pixels than this is "
                           "unreadable (see --on-corrupt) and never decoded; 0: no cap", "apply", min=0)
    scenes_images: int = _opt(512, "size of the built-in scenes dataset when --data is not given", min=1)
    # objective and model
    method: str = _opt("pixpro", "self-supervised objective; also loads its bundled defaults", choices=METHODS)
    arch: str = _opt("resnet50", "encoder architecture (ResNets; ViTs for loca)", choices=ARCHS)
    encoder_weights: str | None = _opt(None, "torchvision state_dict to start the encoder from; none: random init")
    proj_hidden_dim: int = _opt(4096, "hidden width of the projector (and predictor) MLP", min=1)
    proj_dim: int = _opt(256, "output width of the projector", min=1)
    concat_views: bool = _opt(False, "run both views through the encoder in one call (shared BatchNorm statistics)")
    temperature: float = _opt(0.3, "softmax temperature (PixContrast, SimCLR, MoCo v2, SwAV; LOCA's student); "
                                   "must be positive")
    # PixPro, PixPro + instance branch, PixContrast
    ppm_layers: int = _opt(1, "PixPro: layers of the pixel propagation module's transform", min=0)
    ppm_gamma: float = _opt(2.0, "PixPro: sharpness exponent of the propagation similarities", min=0)
    ppm_clamp: float = _opt(0.0, "PixPro: similarities below this are set to zero before the exponent")
    pos_ratio: float = _opt(0.7, "pixel pairs closer than this fraction of a feature cell are positives", min=0)
    ins_loss_weight: float = _opt(0.0, "weight of the BYOL-style instance branch (pixpro_ins)", min=0)
    pixpro_weight: float = _opt(1.0, "weight of the pixel propagation loss", min=0)
    pixcontrast_weight: float = _opt(0.0, "weight of the pixel-level InfoNCE loss (pixcontrast)", min=0)
    neg_ratio: float = _opt(0.7, "PixContrast: cells at or beyond this distance ratio are negatives", min=0)
    # SimCLR
    pair_loss: str = _opt("infonce", "SimCLR: the loss over the batch's pairs (both views of an image positive, every "
                          "other pair negative): infonce (NT-Xent, reads --temperature), contrastive (pull positives, "
                          "push negatives beyond --pair-margin), triplet_hard (hardest negative per anchor), "
                          "triplet_all (mean over all negatives), npair (Sohn's N-pair on raw embeddings, L2 penalty)",
                          choices=PAIR_LOSSES)
    pair_margin: float = _opt(0.5, "SimCLR: margin of the contrastive and triplet losses, a Euclidean distance "
                                   "between L2-normalised embeddings (they lie 0 to 2 apart)", min=0)
    # MoCo v2
    queue_size: int = _opt(65536, "MoCo v2: keys kept in the queue of negatives", min=1)
    moco_symmetric: bool = _opt(False, "MoCo v2: symmetric loss over both views")
    # SwAV (and LOCA's cluster targets)
    num_prototypes: int = _opt(3000, "SwAV, LOCA: number of prototypes", min=1)
    sinkhorn_eps: float = _opt(0.05, "SwAV: entropy regularisation of the Sinkhorn-Knopp codes", min=0)
    sinkhorn_iters: int = _opt(3, "SwAV, LOCA: Sinkhorn-Knopp iterations", min=1)
    swav_queue: int = _opt(0, "SwAV: past embeddings kept for the codes (0: none)", min=0)
    swav_queue_start_epoch: int = _opt(15, "SwAV: the epoch (from 0) from which the queue is filled, and used once "
                                       "full; before it the codes come from the batch alone", min=0)
    freeze_prototypes_steps: int = _opt(0, "SwAV: optimiser steps during which the prototypes stay fixed", min=0)
    # LOCA
    teacher_temperature: float = _opt(0.05, "LOCA: temperature of the teacher's cluster assignments", min=0)
    query_keep: int = _opt(70, "LOCA: patch tokens of query 0 the student keeps (of 196 at 224 px)", min=1)
    reference_keep: float = _opt(0.2, "LOCA: fraction of the reference's tokens kept, as one contiguous run",
                                 min=0, max=1)
    stochastic_depth: float = _opt(0.1, "ViT encoders: stochastic depth rate of the last block", min=0, max=1)
    # the pretext tasks
    jigsaw_permutations: int = _opt(1000, "jigsaw: size of the permutation set, chosen by maximal Hamming distance "
                                          "(the paper also tries 100)", min=2)
    tile_grayscale_p: float = _opt(0.66, "jigsaw, relative_location: probability that a view's tiles are made grey "
                                         "(against chromatic aberration shortcuts)", min=0, max=1)
    relative_location_colour: str = _opt("grayscale", "relative_location: grayscale (tiles grey with "
                                         "probability tile_grayscale_p) or drop (one colour channel kept, noise in the others)",
                                         choices=RELATIVE_LOCATION_COLOURS)
    colorization_mode: str = _opt("classification", "colorization: classification over the in-gamut ab bins with "
                                  "soft targets and rebalancing, or plain ab regression",
                                  choices=COLORIZATION_MODES)
    colorization_neighbours: int = _opt(5, "colorization: nearest ab bins each pixel's target is spread over "
                                        "(Gaussian weights, sigma 5); the paper's 5, the official training code "
                                        "uses 10", min=1, max=COLORIZATION_BINS)
    denoising_noise: str = _opt("masking", "denoising_ae: masking (drop pixels) or gaussian (additive noise)",
                                choices=DENOISING_NOISES)
    denoising_mask_p: float = _opt(0.3, "denoising_ae: probability that masking noise drops a pixel", min=0, max=0.99)
    denoising_sigma: float = _opt(0.1, "denoising_ae: standard deviation of the gaussian noise", min=0)
    # optimisation
    optimizer: str = _opt("lars", "lars, sgd (SGD with momentum and weight decay on every parameter), or adamw "
                          "(no decay on 1-D parameters)", choices=("lars", "sgd", "adamw"))
    clip_grad_norm: float = _opt(0.0, "clip the global gradient norm to this value before each step (0: off)",
                                 "apply", min=0)
    epochs: int = _opt(100, "length of the schedules (lr, momentum) in epochs", min=1)
    max_steps: int | None = _opt(None, "stop after this many optimiser steps (the schedules still span --epochs)",
                                 "apply", min=1)
    batch_size: int = _opt(64, "images per process per micro-batch", min=1)
    accum_steps: int = _opt(1, "micro-batches accumulated per optimiser step", min=1)
    base_lr: float = _opt(1.0, "base learning rate, scaled by the global batch (see --lr-scaling)", min=0)
    lr_scaling: str = _opt("linear", "peak lr: linear = base_lr * B / 256; sqrt = 4 * sqrt(B / 1024)",
                           choices=("linear", "sqrt"))
    lr_schedule: str = _opt("warmup_cosine", "warmup_cosine: linear warmup from peak/100, then cosine decay to "
                            "--final-lr (absolute); warmup_cosine_relative (LOCA's, from scenic): linear warmup from "
                            "0, then a cosine over the remaining steps down to --final-lr-fraction of the peak",
                            choices=LR_SCHEDULES)
    warmup_epochs: float = _opt(5.0, "linear lr warmup, in epochs", min=0)
    final_lr: float = _opt(1e-6, "warmup_cosine: learning rate at the end of the cosine decay", "apply", min=0)
    final_lr_fraction: float = _opt(0.01, "warmup_cosine_relative: learning rate at the end of the cosine decay, as "
                                    "a fraction of the peak (scenic's alpha; LOCA's 0.01)", "apply", min=0, max=1)
    weight_decay: float = _opt(1e-5, "weight decay (LARS: multi-dimensional parameters only)", "apply", min=0)
    sgd_momentum: float = _opt(0.9, "momentum of the SGD/LARS update", "apply", min=0, max=1)
    lars_trust: float = _opt(0.001, "LARS trust coefficient; short runs need more (0.02 suits a few hundred steps)",
                             "apply", min=0)
    ema_momentum: float = _opt(0.99, "momentum of the target (EMA) update at step 0", min=0, max=1)
    ema_schedule: str = _opt("cosine", "target momentum: cosine (rises to 1 over training) or constant",
                             choices=("cosine", "constant"))
    # engine
    device: str = _opt("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N", "apply")
    precision: str = _opt("auto", "auto (bf16 where this GPU or CPU has native bf16, else fp32), fp32, bf16 or fp16",
                          choices=PRECISIONS)
    channels_last: bool = _opt(True, "channels-last memory format for the model and views", "apply")
    attention: str = _opt("auto", "attention kernel of the ViTs: auto (torch's choice) or math (matmul, softmax, "
                          "matmul; on a CPU faster for small views in bf16, see benchmarks.bench_attention)", "apply",
                          choices=ATTENTION_KERNELS)
    compile: bool = _opt(False, "torch.compile the model (slow first steps, faster later)", "apply")
    compile_mode: str = _opt("default", "torch.compile mode when compiling; the other two tune kernels (much longer "
                             "compilation) or capture CUDA graphs", "apply",
                             choices=("default", "max-autotune", "reduce-overhead"))
    compile_step: bool = _opt(False, "torch.compile the whole training step (forward, backward, optimiser, momentum "
                              "update) as one graph instead of the model, in --compile-mode; one process, one "
                              "micro-batch per step, not fp16", "apply")
    sync_bn: bool | None = _opt(None, "synchronise BatchNorm statistics across GPU processes (torchrun); none: as "
                                      "the method's reference does, in multi-GPU runs only; CUDA devices only",
                                "apply")
    seed: int = _opt(0, "seed of the model initialisation and the data order")
    out: str | None = _opt(None, "output folder: checkpoints, metrics.jsonl, tb/; none: runs/METHOD (runs/PRESET-METHOD "
                           "with --config PRESET)", "apply")
    log_every: int = _opt(10, "optimiser steps between metric lines", "apply", min=1)
    ckpt_every: int = _opt(500, "optimiser steps between checkpoints (0: epoch ends only)", "apply", min=0)
    ckpt_every_minutes: float = _opt(30.0, "also write a checkpoint when this many minutes of wall time have passed "
                                     "since the last one, so a kill -9 loses at most that much work (0: off)",
                                     "apply", min=0)
    keep_ckpts: int = _opt(3, "newest checkpoints kept in --out", "apply", min=1)
    resume: bool = _opt(True, "continue from the newest checkpoint in --out when there is one", "apply")
    tensorboard: bool = _opt(True, "write TensorBoard events to --out/tb when TensorBoard is installed", "apply")
    profile: int = _opt(0, "record this many steps with torch.profiler, then stop (0: no profiling)", "apply", min=0)
    probe_every: int = _opt(0, "dense linear probe of the online encoder every N steps (0: never)", "apply", min=0)
    probe_images: int = _opt(64, "scenes per split (train and val) for that probe", "apply", min=1)

    def __init__(self, **values):
        self._fill([("given", values)])

    @classmethod
    def layered(cls, layers: list[tuple[str, dict]]) -> "TrainConfig":
        """A config from ``(label, fields)`` layers, later ones winning (a preset, then flags);
        the labels are what :meth:`provenance` names. Unknown keys name their layer."""
        cfg = cls.__new__(cls)
        cfg._fill(layers)
        return cfg

    def _fill(self, layers: list[tuple[str, dict]]) -> None:
        names = [f.name for f in fields(self)]
        given, source = {}, {}
        for label, values in layers:
            if not isinstance(values, dict):
                raise ValueError(f"{label}: a config must be a JSON object of TrainConfig fields, got a "
                                 f"{type(values).__name__}")
            unknown = [k for k in values if k not in names]
            if unknown:
                hints = []
                for k in unknown:
                    close = difflib.get_close_matches(k, names, n=1)
                    hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                where = "" if label == "given" else f" in {label}"
                raise ValueError(f"unknown config key(s){where}: {', '.join(hints)}")
            given.update(values)
            source.update(dict.fromkeys(values, label))
        method = given.get("method", DEFAULT_METHOD)
        entry = METHODS.get(method) if isinstance(method, str) else None
        reference = dict(entry.defaults) if entry is not None else {}
        for f in fields(self):
            if f.name in given:
                value = given[f.name]
            elif f.name in reference:
                value = reference[f.name]
                source[f.name] = f"{method}'s defaults"
            elif f.name == "out":
                value = default_out(method, [label for label, _ in layers])
            else:
                value = f.default
            setattr(self, f.name, value)
        self._layers = [(label, dict(values)) for label, values in layers]
        self._source = source

    def source(self, key: str) -> str:
        """Where field ``key``'s value came from: a layer's label, the method's defaults, or
        ``default``."""
        return self._source.get(key, "default")

    def provenance(self) -> str | None:
        """One line naming what presets and flags set, with the method's reference value beside
        each one they replaced; None when they replaced none (the run is the method's own)."""
        entry = METHODS.get(self.method)
        reference = dict(entry.defaults) if entry is not None else {}
        groups: dict[str, list[str]] = {}
        replaced = False
        for f in fields(self):
            label = self.source(f.name)
            if label == "default" or label.endswith("'s defaults") or f.name == "method":
                continue
            text = f.name
            if f.name in reference and reference[f.name] != getattr(self, f.name):
                text += f" ({self.method}'s reference: {reference[f.name]!r})"
                replaced = True
            groups.setdefault(label, []).append(text)
        if not replaced:
            return None
        return ("settings: " + "; ".join(f"from {label}: {', '.join(names)}" for label, names in groups.items())
                + f"; everything else: {self.method}'s reference settings, then the defaults")

    def validate(self) -> "TrainConfig":
        """Self, when every value is usable; else a :class:`ConfigError` naming the field and
        where its value came from."""
        try:
            self._check()
        except ConfigError as e:
            if e.key and e.source is None:
                e.source = self.source(e.key)
            raise
        return self

    def _check(self) -> None:
        if isinstance(self.lr_schedule, str) and self.lr_schedule in RETIRED_LR_SCHEDULES:
            raise ConfigError("lr_schedule", RETIRED_LR_SCHEDULES[self.lr_schedule])
        for f in fields(self):
            check_field(f, getattr(self, f.name))

        def need(ok, key, detail):
            if not ok:
                raise ConfigError(key, detail)
        need(self.image_size % 32 == 0, "image_size",
             f"must be a multiple of 32 (the encoder's stride), got {self.image_size}")
        need(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        need(self.out.strip() != "", "out", "must name the output folder, got an empty string")
        need(not Path(self.out).exists() or Path(self.out).is_dir(), "out",
             f"{self.out!r} is a file, not a folder")
        need(self.device == "auto" or self.device == "cpu" or self.device == "cuda"
             or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             "device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        entry = method_entry(self.method)
        for key in entry.positive:
            need(getattr(self, key) > 0, key, f"must be > 0 for method {self.method!r}: it weighs the loss term "
                                              f"that makes the method what it is")
        views = len(get_recipe(self.recipe).views)
        wants = entry.cls
        need((wants.num_views is None or views == wants.num_views) and views >= wants.min_views, "recipe",
             f"{self.recipe!r} has {views} view(s); method {self.method!r} needs "
             + (f"{wants.num_views}" if wants.num_views is not None else f"at least {wants.min_views}")
             + f" (its own plan is {entry.recipe!r})")
        for f in fields(self):
            owners = field_owners(f.name)
            if owners and self.method not in owners and getattr(self, f.name) != f.default:
                came = self.source(f.name)
                raise ConfigError(f.name, f"{getattr(self, f.name)!r} is a setting of {', '.join(owners)} only; "
                                          f"method {self.method!r} does not read it (leave it at its default, "
                                          f"{f.default!r})" + ("" if came in NOT_PRESETS + ("default",) else
                                                               "; the preset was made for another method"))
        # each schedule reads one of the two final rates; the other, set, would do nothing
        relative = self.lr_schedule == "warmup_cosine_relative"
        for key, reader in (("final_lr", "warmup_cosine"), ("final_lr_fraction", "warmup_cosine_relative")):
            unread = (self.lr_schedule != reader) and getattr(self, key) != _DEFAULTS[key]
            need(not unread, key, f"{getattr(self, key)!r} is read by --lr-schedule {reader} only; "
                 f"{self.lr_schedule} ends at " + ("final_lr_fraction of the peak" if relative else "final_lr")
                 + f" (leave {key} at its default, {_DEFAULTS[key]!r})")
        margin_default = _DEFAULTS["pair_margin"]
        need(self.pair_margin == margin_default or self.pair_loss in MARGIN_LOSSES, "pair_margin",
             f"{self.pair_margin!r} is read by pair_loss {', '.join(MARGIN_LOSSES)} only; pair_loss "
             f"{self.pair_loss!r} does not read it (leave it at its default, {margin_default!r})")
        vit_method = entry.encoder == "vit"
        need(vit_method == (self.arch in VIT_ARCHS), "arch",
             f"{self.arch!r} does not fit method {self.method!r}: "
             + (f"it needs a ViT encoder ({', '.join(VIT_ARCHS)})" if vit_method
                else f"it needs a ResNet encoder ({', '.join(RESNET_ARCHS)})"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, label: str = "given") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object of TrainConfig fields, got a {type(d).__name__}")
        return cls.layered([(label, d)]).validate()

    @classmethod
    def preset_layer(cls, path: str | Path) -> tuple[str, dict]:
        """``(label, fields)`` of a JSON file, of a bundled preset (named with or without
        .json), or of a method's name (its reference settings: ``{"method": name}``)."""
        path = Path(path)
        if not path.is_file() and len(path.parts) == 1:   # a bundled preset, named with or without .json
            for preset in (PRESETS_DIR / f"{path.name}.json", PRESETS_DIR / path.name):
                if preset.is_file():
                    path = preset
                    break
            else:
                if path.name.removesuffix(".json") in METHODS:
                    name = path.name.removesuffix(".json")
                    return f"{name}'s defaults", {"method": name}
        if not path.is_file():
            presets = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
            raise FileNotFoundError(f"config file not found: {path} (bundled presets: {', '.join(presets)}; "
                                    f"or a method's name: {', '.join(METHODS)})")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"config file {path} must hold a JSON object of TrainConfig fields "
                             f'(e.g. {{"batch_size": 64}}), not a {type(d).__name__}')
        label = path.stem if path.parent == PRESETS_DIR else str(path)
        return label, d

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """A JSON file, a bundled preset's name (see :data:`PRESETS_DIR`) or a method's name."""
        return cls.layered([cls.preset_layer(path)]).validate()

    def replace(self, **changes) -> "TrainConfig":
        """This config with ``changes`` as one more layer: fields it did not set follow a changed
        method's reference settings."""
        return TrainConfig.layered(self._layers + [("given", changes)]).validate()


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def field_type(f: dataclasses.Field) -> type:
    """The value type of a TrainConfig field (``int | None`` -> int)."""
    names = [t.strip() for t in str(f.type).split("|") if t.strip() != "None"]
    return _TYPES[names[0]]


def field_optional(f: dataclasses.Field) -> bool:
    return "None" in str(f.type)


def check_field(f: dataclasses.Field, value) -> None:
    """A :class:`ConfigError` when ``value`` breaks field ``f``'s type, choices or bounds."""
    meta = f.metadata
    if value is None:
        if not field_optional(f):
            raise ConfigError(f.name, "must be given (it has no 'none' value)")
        return
    tp = field_type(f)
    ok = isinstance(value, bool) if tp is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
        isinstance(value, tp) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f.name, f"must be {'a number' if tp is float else 'an ' + tp.__name__ if tp is int else 'a ' + tp.__name__}"
                                  f", got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f.name, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f.name, f"must be a finite number, got {value!r}")
    if tp is int and not -2 ** 63 <= value < 2 ** 63:
        raise ConfigError(f.name, f"is out of range (a 64-bit integer), got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f.name, f"must be at least {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f.name, f"must be at most {hi}, got {value!r}")


def field_owners(name: str) -> tuple[str, ...]:
    """The methods that declare field ``name`` as their own (empty: every method reads it)."""
    return methods_reading(name)


def method_fields(method: str) -> tuple[str, ...]:
    """The fields that only some methods read and ``method`` is one of them."""
    return tuple(method_entry(method).settings)


def _fields_by_rule(rule: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["resume"] == rule)


def resume_differences(saved: dict, current: "TrainConfig") -> list[str]:
    """Human-readable list of the differences that make resuming from ``saved`` unsafe
    (fields whose metadata says ``resume: refuse``)."""
    cur = current.to_dict()
    # a field a checkpoint predates had its default value then, except SwAV's queue start:
    # a queue was filled and used from the first step
    default = {f.name: f.default for f in fields(TrainConfig)}
    if saved.get("method") == "swav" and saved.get("swav_queue", 0):
        default["swav_queue_start_epoch"] = 0

    def same(key, was, now):
        if key == "data" and was is not None and now is not None:   # one folder, named two ways
            return Path(was).resolve() == Path(now).resolve()
        return was == now

    def note(key, was):
        retired = key == "lr_schedule" and isinstance(was, str) and was in RETIRED_LR_SCHEDULES
        return f" ({RETIRED_LR_SCHEDULES[was]})" if retired else ""
    return [f"{k}: checkpoint has {saved.get(k, default[k])!r}, config has {cur[k]!r}" + note(k, saved.get(k))
            for k in _fields_by_rule("refuse") if not same(k, saved.get(k, default[k]), cur[k])]


def resume_applied_changes(saved: dict, current: "TrainConfig") -> list[str]:
    """The differences a resumed run simply applies (fields with ``resume: apply``), worded as
    :func:`resume_differences`; a key the checkpoint does not have is not a change."""
    cur = current.to_dict()
    return [f"{k}: checkpoint has {saved.get(k)!r}, config has {cur[k]!r}"
            for k in _fields_by_rule("apply") if k in saved and saved[k] != cur[k]]
