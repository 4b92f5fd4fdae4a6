"""The training configuration: one flat dataclass, loadable from JSON, overridable from the
command line, checked on load (unknown keys and bad values are errors that name them)."""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, fields
from pathlib import Path


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRESETS_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    # data
    data: str | None = None            # image folder (or .beton for ffcv); None = built-in scenes
    loader: str = "torch"              # torch | dali | ffcv | synthetic
    recipe: str = "byol"
    image_size: int = 224
    num_workers: int | None = None     # None = the loader's default
    on_corrupt: str = "skip"           # skip | error
    scenes_images: int = 512           # size of the built-in dataset when data is None
    # objective and model
    method: str = "pixpro"             # pixpro | pixpro_ins | pixcontrast | byol | simsiam | simclr | mocov2 | swav
    arch: str = "resnet50"
    encoder_weights: str | None = None
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    ppm_layers: int = 1
    ppm_gamma: float = 2.0
    ppm_clamp: float = 0.0
    pos_ratio: float = 0.7
    ins_loss_weight: float = 0.0
    pixpro_weight: float = 1.0
    pixcontrast_weight: float = 0.0
    neg_ratio: float = 0.7             # PixContrast: cells at or beyond this distance ratio are negatives
    temperature: float = 0.3           # PixContrast, SimCLR, MoCo v2, SwAV
    queue_size: int = 65536            # MoCo v2 queue of keys
    moco_symmetric: bool = False
    num_prototypes: int = 3000         # SwAV
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    swav_queue: int = 0                # SwAV: past embeddings kept for the codes (0: none)
    freeze_prototypes_steps: int = 0
    concat_views: bool = False
    # optimisation
    optimizer: str = "lars"            # lars | sgd (SGD with momentum and weight decay on every parameter)
    epochs: int = 100
    max_steps: int | None = None       # stop after this many optimiser steps (schedules still span `epochs`)
    batch_size: int = 64               # per process, per micro-batch
    accum_steps: int = 1
    base_lr: float = 1.0
    lr_scaling: str = "linear"         # linear: base_lr * B / 256; sqrt: 4 * sqrt(B / 1024)
    warmup_epochs: float = 5.0
    final_lr: float = 1e-6
    weight_decay: float = 1e-5
    sgd_momentum: float = 0.9
    lars_trust: float = 0.001
    ema_momentum: float = 0.99
    ema_schedule: str = "cosine"       # cosine: rises to 1 over training; constant
    # engine
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "auto"            # auto (bf16 on GPUs that have it, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    out: str = "runs/pixpro"
    log_every: int = 10
    ckpt_every: int = 500              # optimiser steps between checkpoints (0: epoch ends only)
    keep_ckpts: int = 3
    resume: bool = True                # continue from the newest checkpoint in `out` when there is one
    tensorboard: bool = True
    profile: int = 0                   # record this many steps with torch.profiler, then stop
    probe_every: int = 0               # dense linear probe of the online encoder every N steps (0: never)
    probe_images: int = 64             # scenes per split for that probe (train and val)

    def validate(self) -> "TrainConfig":
        def need(ok, msg):
            if not ok:
                raise ValueError(f"invalid config: {msg}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.on_corrupt in ("skip", "error"), f"on_corrupt must be 'skip' or 'error', got {self.on_corrupt!r}")
        need(self.lr_scaling in ("linear", "sqrt"), f"lr_scaling must be 'linear' or 'sqrt', got {self.lr_scaling!r}")
        for name in ("image_size", "batch_size", "accum_steps", "epochs", "log_every", "keep_ckpts"):
            need(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        need(self.image_size % 32 == 0, f"image_size must be a multiple of 32 (the encoder's stride), got {self.image_size}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}")
        need(0.0 <= self.ema_momentum <= 1.0, f"ema_momentum must lie in [0, 1], got {self.ema_momentum}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be non-negative, got {self.warmup_epochs}")
        need(self.ckpt_every >= 0, f"ckpt_every must be non-negative, got {self.ckpt_every}")
        need(self.probe_every >= 0, f"probe_every must be non-negative, got {self.probe_every}")
        need(self.probe_images >= 1, f"probe_images must be at least 1, got {self.probe_images}")
        from .methods import METHODS
        need(self.method in METHODS, f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        need(self.optimizer in ("lars", "sgd"), f"optimizer must be 'lars' or 'sgd', got {self.optimizer!r}")
        need(self.ema_schedule in ("cosine", "constant"),
             f"ema_schedule must be 'cosine' or 'constant', got {self.ema_schedule!r}")
        need(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        need(self.method != "pixcontrast" or self.pixcontrast_weight > 0,
             "method 'pixcontrast' needs pixcontrast_weight > 0 (start from --config pixcontrast)")
        need(self.method != "pixpro_ins" or self.ins_loss_weight > 0,
             "method 'pixpro_ins' needs ins_loss_weight > 0 (start from --config pixpro_ins)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown config key(s): {', '.join(hints)}")
        return cls(**d).validate()

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """A JSON file, or the name of a bundled preset (see :data:`PRESETS_DIR`)."""
        path = Path(path)
        if not path.is_file() and (PRESETS_DIR / f"{path.name}.json").is_file():
            path = PRESETS_DIR / f"{path.name}.json"
        if not path.is_file():
            presets = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
            raise FileNotFoundError(f"config file not found: {path} (bundled presets: {', '.join(presets)})")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# Fields whose change a resumed run takes on from its checkpoint's step (they touch neither
# the state's shapes nor the sequence of batches and schedules); a change of any other field
# is refused.
RESUME_APPLIED = ("num_workers", "on_corrupt", "device", "channels_last", "compile", "out", "log_every",
                  "ckpt_every", "keep_ckpts", "resume", "tensorboard", "profile", "probe_every", "probe_images",
                  "max_steps", "weight_decay", "lars_trust", "sgd_momentum", "final_lr")


def _changed(saved: dict, current: "TrainConfig", applied: bool) -> list[str]:
    cur = current.to_dict()
    return [f"{k}: checkpoint has {saved.get(k)!r}, config has {cur[k]!r}"
            for k in cur if (k in RESUME_APPLIED) == applied and saved.get(k, cur[k]) != cur[k]]


def resume_differences(saved: dict, current: "TrainConfig") -> list[str]:
    """Human-readable list of the differences that make resuming from ``saved`` unsafe."""
    return _changed(saved, current, applied=False)


def resume_applied_changes(saved: dict, current: "TrainConfig") -> list[str]:
    """The changed fields that a resumed run applies (see :data:`RESUME_APPLIED`)."""
    return _changed(saved, current, applied=True)
