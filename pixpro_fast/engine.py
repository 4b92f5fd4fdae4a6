"""The training engine: a plain, explicit fit loop.

Mixed precision, channels-last, optional torch.compile, LARS with per-step schedules, the
momentum target update, gradient accumulation, torchrun + DistributedDataParallel, atomic
checkpoints (every N steps and every M minutes) with exact resume, a clean stop on Ctrl-C,
SIGTERM or SIGUSR1, a stop on non-finite loss, and metrics that include the fraction of time
spent waiting for data.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.view_plan_loader import default_workers

from .checkpoint import (archive_previous_run, check_disk_space, list_checkpoints, load_checkpoint,
                         load_newest_intact, non_finite_entries, remove_partial_writes, rng_state,
                         save_checkpoint, set_rng_state)
from .config import ConfigError, TrainConfig, resume_applied_changes, resume_differences
from .hardware import native_precisions
from .metrics import LogWindow, MetricsLogger, WaitMeter, truncate_metrics, verdict
from .optim import lars_travel
from .step import TrainStep, compile_step, whole_step_problem
from .training import apply_optimizer_settings, build_loader_for, build_training, resolve_device


class NonFiniteLossError(RuntimeError):
    pass


class ResumeMismatchError(ValueError):
    pass


class AbortRun(BaseException):
    """A second stop signal (Ctrl-C pressed again): leave at once, saving nothing more.
    ``signum`` is that signal's number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


# Signals that end a run cleanly: the step in progress finishes, a checkpoint is written and
# the process exits with status 128 + the signal's number (130, 143, 138 on Linux).
# Schedulers send SIGTERM before they kill (Slurm, Kubernetes, preemptible machines), and
# Slurm's --signal is often SIGUSR1.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)
# A SIGTERM or SIGUSR1 repeated within this many seconds is the same request: Slurm signals
# every process of a job, and torchrun forwards the signal it got to its workers as well.
REPEAT_WINDOW_S = 1.0


def signal_label(signum: int) -> str:
    """How a stop signal is named to the user: "Ctrl-C" for SIGINT, else its name."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@dataclass
class FitResult:
    steps: int
    epoch: int
    status: str                 # finished | max_steps | interrupted | profiled
    images_per_sec: float
    data_wait_fraction: float
    last_loss: float
    checkpoint: Path | None
    metrics_path: Path
    out_dir: Path
    signal: int | None = None   # the stop signal of an interrupted run (signal.SIGTERM, ...)


def _no_buffer_sync() -> dict:
    """DDP's option for not broadcasting buffers every forward (each rank's BatchNorm keeps its
    running statistics; they are averaged at save time). Newer PyTorch renamed it."""
    import inspect
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun set for this process; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    """``Trainer(cfg).fit()``. A loader may be injected (tests, benchmarks); otherwise it
    is built from the config with :func:`pipelines.build_loader`. ``on_step(step, seconds)``,
    where given, is called by ``fit`` after every optimiser step with the step's number (from
    1) and its wall time (the device synchronised first, so the time is the step's own)."""

    clock = time.monotonic   # seconds, for --ckpt-every-minutes (a test may replace it)

    def __init__(self, cfg: TrainConfig, loader=None, log_stream=None, on_step=None):
        cfg = cfg.validate()
        self.on_step = on_step
        if cfg.data:   # recorded absolute: a resume from another folder must not read another dataset
            cfg = cfg.replace(data=str(Path(cfg.data).resolve()))
        self.cfg = cfg
        self.rank, self.world_size, self.local_rank = dist_info()
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if (cfg.device != "cpu" and torch.cuda.is_available()) else "gloo"
            dist.init_process_group(backend)
        self.device = resolve_device(cfg.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.is_main = self.rank == 0
        self.out_dir = Path(cfg.out)
        self.log_stream = log_stream or sys.stderr
        torch.manual_seed(cfg.seed)
        if loader is None:
            loader = build_loader_for(cfg, self.device, self.rank, self.world_size,
                                      self.log_stream if self.is_main else None)
        self.training = build_training(cfg, loader, self.device, self.rank, self.world_size)
        t = self.training
        self.precision, self.loader, self.model, self.optimizer = t.precision, t.loader, t.method, t.optimizer
        self.steps_per_epoch, self.total_steps, self.global_batch = t.steps_per_epoch, t.total_steps, t.global_batch
        self.peak_lr, self.warmup_steps = t.peak_lr, t.warmup_steps
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        forward = self.model
        if self.world_size > 1:
            forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_no_buffer_sync())
        self.ddp = forward if self.world_size > 1 else None
        # the stop and timed-save decisions travel on a CPU group: a NCCL collective read back
        # on the host would wait for the GPU at every step
        self._control_group = None
        if self.world_size > 1 and dist.get_backend() != "gloo":
            self._control_group = dist.new_group(backend="gloo")
        if cfg.compile_step:
            problem = whole_step_problem(cfg.accum_steps, self.world_size, self.precision)
            if problem:
                raise ConfigError("compile_step", f"cannot capture this run's step whole: {problem}")
        self.forward = torch.compile(forward, mode=cfg.compile_mode) if cfg.compile and not cfg.compile_step else forward
        self.train_step = TrainStep(t, self.forward, self.scaler if self.scaler.is_enabled() else None, self.ddp,
                                    cfg.clip_grad_norm, whole=cfg.compile_step)
        self._run_step = compile_step(self.train_step, cfg.compile_mode) if cfg.compile_step else self.train_step
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0   # micro-batches of the current epoch already consumed by finished steps
        self._probe = None        # OnlineProbe, built on first use (cfg.probe_every)
        self._signal_received = None   # (signal, time) of the first stop signal this process got in fit
        self._saved_at = self.clock()  # when the last checkpoint was written or fit started

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "rng": rng_state(), "config": self.cfg.to_dict(),
                "world_size": self.world_size, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        diffs = resume_differences(state.get("config", {}), self.cfg)
        if state.get("world_size", 1) != self.world_size:
            diffs.append(f"world_size: checkpoint has {state.get('world_size')}, this run has {self.world_size}")
        if state.get("steps_per_epoch", self.steps_per_epoch) != self.steps_per_epoch:
            diffs.append(f"steps per epoch: checkpoint has {state['steps_per_epoch']}, this run has "
                         f"{self.steps_per_epoch} (the data holds another number of images than when the "
                         f"run started, so its order and schedule would change)")
        if diffs:
            raise ResumeMismatchError(f"cannot resume from {source}: the configuration differs:\n  - "
                                      + "\n  - ".join(diffs)
                                      + "\nuse the original settings, or a new --out folder to start afresh")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        apply_optimizer_settings(self.cfg, self.optimizer)
        self.train_step.prepare()       # a step compiled whole reads the loaded state and settings
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        set_rng_state(state["rng"])
        self.resume_changes = resume_applied_changes(state.get("config", {}), self.cfg)


    def save(self) -> Path | None:
        """Write a checkpoint (on rank 0; every rank must call it). BatchNorm running statistics
        are first averaged over the ranks, so the file holds one set for the whole run. A state
        holding a NaN or an inf is never written: NonFiniteLossError instead."""
        if self.world_size > 1:
            self._average_batchnorm_statistics()
        state = self.state_dict()
        bad = non_finite_entries({"model": state["model"], "optimizer": state["optimizer"]["state"]})
        if bad:
            raise NonFiniteLossError(self._divergence_message(
                f"{len(bad)} tensors of the model and optimiser state became non-finite by step {self.step} "
                f"(first: {bad[0]})"))
        self._saved_step = self.step
        self._saved_at = self.clock()
        if not self.is_main:
            return None
        return save_checkpoint(state, self.out_dir, self.step, self.cfg.keep_ckpts)

    @torch.no_grad()
    def _average_batchnorm_statistics(self) -> None:
        """Running mean and variance of every BatchNorm, averaged over the ranks in place (each
        rank's differ, as each saw its own batches); batch statistics drive training, so the
        averaging does not change the training trajectory."""
        buffers = [b for name, b in self.model.named_buffers() if name.endswith(("running_mean", "running_var"))]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    def _housekeeping(self) -> None:
        """Before a run touches ``out``: delete partial writes left by a killed run; for a fresh
        start (resume off) move an earlier run's files aside rather than mix with or delete them."""
        if self.is_main:
            for p in remove_partial_writes(self.out_dir):
                print(f"removed {p.name}, a checkpoint write that a killed run left unfinished",
                      file=self.log_stream)
            if not self.cfg.resume:
                moved = archive_previous_run(self.out_dir)
                if moved is not None:
                    print(f"resume is off: moved the earlier run in {self.out_dir} to {moved}", file=self.log_stream)
        if self.world_size > 1:
            dist.barrier()

    def maybe_resume(self) -> Path | None:
        if not self.cfg.resume:
            return None
        found = load_newest_intact(self.out_dir)
        if found is None:
            return None
        path, state = found
        self.load_state_dict(state, str(path))
        return path

    # -- the loop -----------------------------------------------------------------------
    def train_one_step(self, micro_batches) -> tuple[torch.Tensor, float]:
        """One optimiser step on ``micro_batches`` at the current step's schedules, counted
        (:class:`pixpro_fast.step.TrainStep`, compiled whole with ``compile_step``): (its
        statistics as a device tensor, its lr). ``fit`` calls it once per step; a benchmark
        may call it on its own batches."""
        t0 = time.perf_counter() if self.on_step is not None else 0.0
        lr = self.train_step.set_schedules(self.step)
        stats = self._run_step(micro_batches)
        self.step += 1
        self._stat_names = self.train_step.stat_names
        if self.on_step is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.on_step(self.step, time.perf_counter() - t0)
        return stats, lr

    def _on_signal(self, signum, frame):
        """First stop signal: note it, the loop stops after this step and saves. A second one
        aborts at once (AbortRun), except a SIGTERM or SIGUSR1 repeated within REPEAT_WINDOW_S
        of the first (see there)."""
        now = time.monotonic()
        if self._signal_received:
            first, at = self._signal_received
            if signum == first and signum != signal.SIGINT and now - at < REPEAT_WINDOW_S:
                return
            raise AbortRun(signum)
        self._signal_received = (signum, now)
        if self.is_main:
            again = "press again to abort" if signum == signal.SIGINT else "a second signal aborts"
            print(f"\n{signal_label(signum)}: finishing this step, then saving a checkpoint ({again} at once)",
                  file=self.log_stream, flush=True)

    def _poll(self) -> tuple[int, bool]:
        """After a step: (the stop signal, or 0; whether a timed checkpoint is due), the same on
        every rank. A signal may reach only some ranks and only rank 0's clock decides, so with
        several ranks both travel in one small all_reduce (MAX) per step."""
        minutes = self.cfg.ckpt_every_minutes
        due = bool(self.is_main and minutes > 0 and self.clock() - self._saved_at >= 60.0 * minutes)
        received = self._signal_received[0] if self._signal_received else 0
        if self.world_size == 1:
            return received, due
        flags = torch.tensor([received, int(due)], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._control_group)
        return int(flags[0]), bool(flags[1])

    def _momentum(self) -> float:
        return self.training.momentum_at(self.step)

    def short_schedule_note(self) -> str | None:
        """A warning when LARS's trust coefficient cannot move the weights in this schedule."""
        cfg = self.cfg
        if cfg.optimizer != "lars":
            return None
        travel = lars_travel(self.total_steps, self.warmup_steps, self.peak_lr, cfg.lars_trust, cfg.sgd_momentum,
                             cfg.final_lr, cfg.lr_schedule, cfg.final_lr_fraction)
        if travel >= 1.0:
            return None
        return (f"note: with lars_trust={cfg.lars_trust:g} and peak lr {self.peak_lr:.4g}, {self.total_steps} steps can move "
                f"each weight tensor by at most {travel:.2f} of its norm, so the encoder will stay close to its random "
                f"initialisation; for short runs raise --lars-trust (0.02 suits a few hundred steps)")

    def fit(self) -> FitResult:
        """Train to the end of the schedule (or ``--max-steps``, ``--profile``, a stop signal),
        resuming first where a checkpoint allows; checkpoints, metrics and the verdict on the way."""
        cfg = self.cfg
        space_note = check_disk_space(self.out_dir, self.state_dict(), cfg.keep_ckpts) if self.is_main else None
        previous_handlers = self._install_stop_handlers()
        self.resume_changes = []
        self._housekeeping()
        resumed = self.maybe_resume()
        self._saved_step = self.step if resumed else None
        self._saved_at = self.clock()   # --ckpt-every-minutes counts from the start or resume
        self._last_ckpt = None
        if self.is_main:
            truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        stop_at = self.training.stop_step
        if cfg.profile > 0:
            stop_at = min(stop_at, self.step + cfg.profile + 2)
        logger = MetricsLogger(self.out_dir, stop_at, enabled=self.is_main, tensorboard=cfg.tensorboard,
                               start_step=self.step, stream=self.log_stream)
        if self.is_main:
            self._announce(resumed, logger, space_note)
        profiler = self._start_profiler() if cfg.profile > 0 else None
        meter, win = WaitMeter(), LogWindow()
        try:
            self._train(stop_at, logger, meter, win, profiler)
            status = "profiled" if profiler is not None else "max_steps" if self.step < self.total_steps \
                else "finished"
            if self.step and self._saved_step != self.step:
                self._check_finite(win)
                self._save()
        except KeyboardInterrupt:   # a stop signal (or a SIGINT where no handler could be installed)
            status = "interrupted"
            self._save_on_interrupt(win, resumed)
        finally:
            for signum, handler in previous_handlers.items():   # None: one not set from Python, not restorable
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            logger.close()
            if profiler is not None:
                self._finish_profiler(profiler)
        result = FitResult(self.step, self.epoch, status, win.images_per_sec, win.wait_fraction, win.last_loss,
                           self._last_ckpt, logger.path, self.out_dir,
                           self._stop_signal if status == "interrupted" else None)
        if self.is_main:
            self._report(result, meter, logger)
        return result

    def _install_stop_handlers(self) -> dict:
        """Handle the stop signals (finish the step, save) from here on; returns the handlers
        they replace."""
        self._signal_received = None   # (signal, time) of the first stop signal this process got
        self._stop_signal = 0          # the stop signal the ranks agreed on
        if threading.current_thread() is not threading.main_thread():   # Python allows handlers only there
            return {}
        return {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _announce(self, resumed, logger, space_note) -> None:
        """What this run is, before its first step: one line, then any note that needs acting on."""
        cfg = self.cfg
        print(f"pixpro_fast: {cfg.method}, {cfg.arch} on {self.device} ({self.precision}"
              f"{', channels-last' if cfg.channels_last else ''}{', compiled' if cfg.compile else ''}), "
              f"{self.world_size} process(es), global batch {self.global_batch}, peak lr {self.peak_lr:.4g}, "
              f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
              + (f"; resumed from {resumed} at step {self.step}" if resumed else ""), file=self.log_stream)
        notes = []
        if self.training.sync_bn and cfg.sync_bn is None:
            notes.append(f"SyncBatchNorm on: {cfg.method}'s reference synchronises BatchNorm across GPUs "
                         f"(--no-sync-bn turns it off)")
        notes.append(cfg.provenance())
        if self.resume_changes:
            notes.append("settings changed since the checkpoint, applied from here on:\n  - "
                         + "\n  - ".join(self.resume_changes))
        notes += [logger.tensorboard_note, self.short_schedule_note(), space_note]
        for note in notes:
            if note:
                print(note, file=self.log_stream)

    def _train(self, stop_at: int, logger, meter: WaitMeter, win: LogWindow, profiler) -> None:
        """The epochs and steps up to ``stop_at``: a checkpoint at each epoch's end, by steps and
        by minutes; a log line every ``log_every`` steps; KeyboardInterrupt on a stop signal."""
        cfg = self.cfg
        lr = None
        while self.step < stop_at and self.epoch < cfg.epochs:
            self.loader.set_epoch(self.epoch, self.batch_in_epoch)
            self.model.set_epoch(self.epoch)
            it = iter(self.loader)
            for _ in range(self.steps_per_epoch - self.batch_in_epoch // cfg.accum_steps):
                if self.step >= stop_at:
                    break
                t_wait = time.perf_counter()
                micro = self._next_batches(it)
                waited = time.perf_counter() - t_wait
                stats, lr = self.train_one_step(micro)
                meter.step(waited)
                if cfg.probe_every and self.step % cfg.probe_every == 0 and self.is_main:
                    t_probe = time.perf_counter()
                    win.probe = self._online_probe()
                    win.pause(time.perf_counter() - t_probe)   # probe time is not training time
                self.batch_in_epoch += cfg.accum_steps
                win.add(stats, sum(len(b) for b in micro) * self.world_size, sum(b.skipped for b in micro), waited)
                if profiler is not None:
                    profiler.step()
                if self.step % cfg.log_every == 0 or self.step == stop_at:
                    self._log(logger, win, lr)
                elif meter.steps == 1 and self.is_main:
                    # a first sign of life: the window goes on to the first log step unchanged
                    logger.show(self.step, self._window_values(win, lr)[0])
                self._stop_signal, timed = self._poll()
                if timed or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                    self._check_finite(win)
                    self._save()
                if self._stop_signal:
                    raise KeyboardInterrupt
            del it
            if self.batch_in_epoch >= self.steps_per_epoch * cfg.accum_steps:
                self.epoch += 1
                self.batch_in_epoch = 0
                self._check_finite(win)
                self._save()
        if win.steps:
            self._log(logger, win, lr)

    def _next_batches(self, it) -> list:
        """The next step's micro-batches; a loader failure caused by a stop signal (which also
        reached its worker processes) becomes that stop."""
        try:
            return [next(it) for _ in range(self.cfg.accum_steps)]
        except Exception:
            if self._signal_received:
                self._stop_signal = self._signal_received[0]
                raise KeyboardInterrupt from None
            raise

    def _save(self) -> None:
        self._last_ckpt = self.save() or self._last_ckpt

    def _save_on_interrupt(self, win: LogWindow, resumed) -> None:
        """Save the step a stop signal ended on, unless its loss is not finite (nothing is then
        saved over the last good checkpoint); say how to go on."""
        self._stop_signal = self._stop_signal or signal.SIGINT
        by = signal_label(self._stop_signal)
        try:
            if win.stats is not None and not math.isfinite(float(win.stats[0])):
                raise NonFiniteLossError(self._divergence_message(f"the loss became {float(win.stats[0])}"))
            if self._saved_step != self.step:   # not saved at this step already (--ckpt-every)
                self._save()
            if self.is_main:
                print(f"\ninterrupted: saved {self._last_ckpt or resumed} at step {self.step} ({by}); "
                      f"run again to resume", file=self.log_stream)
        except NonFiniteLossError as e:
            if self.is_main:
                print(f"\ninterrupted ({by}), nothing saved: {e}", file=self.log_stream)

    def _report(self, result: FitResult, meter: WaitMeter, logger) -> None:
        """The last line: steps, images/sec and the loader-bound verdict, where things were written."""
        cfg = self.cfg
        in_use = tuple(name for name, on in (("bf16 autocast", self.precision != "fp32"),
                                             ("channels-last", cfg.channels_last), ("torch.compile", cfg.compile))
                       if on)
        judged = verdict(meter.fraction, in_use=in_use, loader=cfg.loader,
                         bf16_native="bf16" in native_precisions(self.device), warmup_steps=meter.warmup_used,
                         measured_steps=meter.measured, batch_headroom=self._batch_headroom(),
                         more_workers=self._more_workers_possible())
        print(f"done ({result.status}): {result.steps} steps, {result.images_per_sec:.1f} images/sec, "
              f"{judged}\n  checkpoint: {result.checkpoint}\n  metrics: {logger.path}", file=self.log_stream)

    def _batch_headroom(self) -> bool:
        """Whether a larger batch per device could raise images/sec: on a GPU whose peak use
        leaves room to double the batch (under half its memory); never on a CPU, where the
        step time grows with the batch."""
        if self.device.type != "cuda":
            return False
        total = torch.cuda.get_device_properties(self.device).total_memory
        return torch.cuda.max_memory_allocated(self.device) < total / 2

    def _more_workers_possible(self) -> bool:
        """False when the loader already runs a worker per CPU core this process may use."""
        workers = getattr(self.loader, "num_workers", None)
        return workers is None or workers < default_workers()

    def _check_finite(self, win: LogWindow) -> None:
        value = win.pending_loss()
        if not math.isfinite(value):
            raise NonFiniteLossError(self._divergence_message(f"the loss became {value} by step {self.step}"))

    def _divergence_message(self, what: str) -> str:
        """What diverged, the newest checkpoint that loads (every written one was checked finite
        when saved), and advice that fits this run."""
        good = "none (no checkpoint was written yet)"
        for path in reversed(list_checkpoints(self.out_dir)):
            try:
                load_checkpoint(path)
            except ValueError:
                continue
            good = str(path)
            break
        advice = [f"a lower --base-lr (now {self.cfg.base_lr:g})"]
        if self.precision == "fp16":
            advice.append("--precision bf16 or fp32 (fp16's range is narrow)")
        elif self.precision == "bf16":
            advice.append("--precision fp32")
        advice.append("checking the input data")
        return (f"{what}; stopping without saving. The last good checkpoint is {good}. Try "
                + ", ".join(advice) + ".")

    def _window_values(self, win, lr):
        """The metrics of the window so far, its mean stats and its wall time; ``win`` is unchanged."""
        now = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stats = (win.stats / max(win.steps, 1)).tolist()
        wall = max(now - win.t0, 1e-9)
        # a method without a momentum target has no momentum to log
        momentum = {"momentum": self._momentum()} if len(self.model.target) else {}
        values = {"epoch": self.epoch, **dict(zip(self._stat_names, stats)), "lr": lr, **momentum,
                  "images_per_sec": win.images / wall, "data_wait_fraction": win.wait / wall,
                  "skipped_images": win.skipped, **win.probe}
        return values, stats, wall

    def _log(self, logger, win: LogWindow, lr) -> None:
        """Write the window's metrics, stop on a non-finite loss, start the next window."""
        values, stats, wall = self._window_values(win, lr)
        logger.log(self.step, values)
        if not math.isfinite(stats[0]):
            self._check_finite(win)
        win.close(stats[0], wall)

    def _online_probe(self) -> dict:
        """probe_miou of the current online encoder (a frozen copy; see :mod:`.probe`)."""
        if self._probe is None:
            from .probe import OnlineProbe
            from .probe_encoders import recipe_stats
            mean, std = recipe_stats(self.cfg)
            self._probe = OnlineProbe(self.cfg.probe_images, device=self.device, method=self.cfg.method,
                                      mean=mean, std=std)
        return self._probe(self.model.online["encoder"])

    # -- profiling ----------------------------------------------------------------------
    def _start_profiler(self):
        from torch.profiler import ProfilerActivity, profile, schedule
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=self.cfg.profile),
                       record_shapes=False)
        prof.__enter__()
        return prof

    def _finish_profiler(self, prof) -> None:
        prof.__exit__(None, None, None)
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / "profile_trace.json"
        prof.export_chrome_trace(str(trace))
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15), file=self.log_stream)
        print(f"chrome trace: {trace} (open in chrome://tracing or Perfetto)", file=self.log_stream)
