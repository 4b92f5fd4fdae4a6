"""Training metrics: JSONL always, TensorBoard when installed, a progress bar on a terminal
and plain lines otherwise; and the loader-bound / compute-bound verdict."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


COMPUTE_REMEDIES = ("bf16 autocast", "channels-last", "torch.compile", "a larger batch per device")
FAST_BACKENDS = ("dali", "ffcv")
WARMUP_STEPS = 5   # first steps of a run left out of the data-wait verdict (workers start, queues fill)
MIN_MEASURED_STEPS = 20   # steps after the warm-up the verdict needs: fewer swing it either way


def verdict(wait_fraction: float, threshold: float = 0.10, in_use: tuple[str, ...] = (), loader: str | None = None,
            bf16_native: bool = True, warmup_steps: int = 0, measured_steps: int | None = None,
            batch_headroom: bool = True, more_workers: bool = True) -> str:
    """Say whether a run is loader-bound, from the fraction of wall time spent waiting for data,
    with only the remedies that can help this run: ``in_use`` names compute remedies (of
    :data:`COMPUTE_REMEDIES`) the run already has; ``loader`` is its backend, not suggested
    again; ``bf16_native`` False drops bf16 (emulated, it would slow the step down);
    ``batch_headroom`` False drops a larger batch (a CPU, or a GPU already over half full);
    ``more_workers`` False drops more loader workers (already one per CPU core);
    ``warmup_steps`` says how many first steps the fraction leaves out.

    ``measured_steps`` (steps timed after the warm-up), when given and under
    :data:`MIN_MEASURED_STEPS` (20), gives no verdict: a few steps swing it either way."""
    if measured_steps is not None and measured_steps < MIN_MEASURED_STEPS:
        return (f"too few steps to judge loader- or compute-bound ({measured_steps} measured after the warm-up; "
                f"at least {MIN_MEASURED_STEPS} needed)")
    after = f" after the first {warmup_steps} steps" if warmup_steps else ""
    if wait_fraction >= threshold:
        remedies = ["more loader workers"] if more_workers else []
        faster = [b for b in FAST_BACKENDS if b != loader]
        if faster:
            remedies.append("a faster backend such as " + " or ".join(faster))
        remedies += ["smaller stored images", "fewer CPU-side augmentations"]
        return (f"loader-bound: {wait_fraction:.0%} of wall time waiting for data{after} "
                f"(remedies: {', '.join(remedies)})")
    skip = set(in_use) | (set() if bf16_native else {"bf16 autocast"})
    if not batch_headroom:
        skip.add("a larger batch per device")
    remedies = [r for r in COMPUTE_REMEDIES if r not in skip]
    said = f"remedies: {', '.join(remedies)}" if remedies else "no remedy left to suggest: the run already has them all"
    return f"compute-bound: {wait_fraction:.0%} of wall time waiting for data{after} ({said})"


class LogWindow:
    """The steps since the last log line (their summed statistics, images, replaced images,
    time waiting for data, wall time since ``t0``, the latest probe), and what the logged
    windows of the run add up to (``run_wait``, ``run_wall``, ``run_images``, ``last_loss``)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.run_wait = self.run_wall = 0.0
        self.run_images = 0
        self.last_loss = float("nan")
        self.reset()

    def reset(self) -> None:
        self.t0 = self.clock()
        self.wait, self.images, self.skipped, self.steps = 0.0, 0, 0, 0
        self.stats = None   # summed per-step statistics (a tensor), None before the first step
        self.probe: dict = {}

    def add(self, stats, images: int, skipped: int, waited: float) -> None:
        """One optimiser step: its statistics, the images it trained on (every rank's), the
        unreadable images its batches replaced, the seconds it waited for them."""
        self.stats = stats if self.stats is None else self.stats + stats
        self.images += images
        self.skipped += skipped
        self.wait += waited
        self.steps += 1

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (spent on other work, a probe) out of the window's wall time."""
        self.t0 += seconds

    def pending_loss(self) -> float:
        """The summed loss of the steps not yet logged (the last logged loss when none)."""
        return self.last_loss if self.stats is None else float(self.stats[0])

    def close(self, loss: float, wall: float) -> None:
        """Add the window, just logged with mean loss ``loss`` over ``wall`` seconds, to the
        run's totals and start the next one."""
        self.last_loss = loss
        self.run_wait, self.run_wall, self.run_images = (self.run_wait + self.wait, self.run_wall + wall,
                                                         self.run_images + self.images)
        self.reset()

    @property
    def images_per_sec(self) -> float:
        return self.run_images / self.run_wall if self.run_wall > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        return self.run_wait / self.run_wall if self.run_wall > 0 else 0.0


class WaitMeter:
    """Time waiting for data and wall time, counted only after the first ``warmup`` steps.

    Call :meth:`step` once per optimiser step with the seconds that step waited for its
    batch; the wall time runs from the end of the last warm-up step to the last call. With
    no step past the warm-up, the totals cover every step (``warmup_used`` says which)."""

    def __init__(self, warmup: int = WARMUP_STEPS, clock=time.perf_counter):
        self.warmup, self.clock = warmup, clock
        self.steps = 0
        self._t_start = clock()
        self._t_mark = None
        self._t_last = self._t_start
        self.all_wait = 0.0
        self.wait = 0.0

    @property
    def measured(self) -> int:
        """Steps timed after the warm-up (what :func:`verdict` needs :data:`MIN_MEASURED_STEPS` of)."""
        return max(self.steps - self.warmup, 0)

    def step(self, waited: float) -> None:
        now = self.clock()
        self.steps += 1
        self.all_wait += waited
        if self.steps == self.warmup:
            self._t_mark = now
        elif self.steps > self.warmup:
            self.wait += waited
        self._t_last = now

    @property
    def warmup_used(self) -> int:
        """Steps left out: ``warmup``, or 0 when the run had no step after it."""
        return self.warmup if self.steps > self.warmup else 0

    @property
    def wall(self) -> float:
        if self.warmup_used:
            return self._t_last - (self._t_mark if self._t_mark is not None else self._t_start)
        return self._t_last - self._t_start

    @property
    def fraction(self) -> float:
        wait = self.wait if self.warmup_used else self.all_wait
        wall = self.wall
        return wait / wall if wall > 0 else 0.0


class MetricsLogger:
    def __init__(self, out_dir: str | Path, total_steps: int, enabled: bool = True, tensorboard: bool = True,
                 start_step: int = 0, stream=None):
        self.enabled = enabled
        self.total_steps = total_steps    # the step the run stops at: progress and ETA count to it
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        self.tensorboard_note = ""
        self._skipped = 0   # unreadable images replaced so far in this process (the progress line's count)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
            except Exception:  # tensorboard is optional
                self.tensorboard_note = "TensorBoard not installed: metrics go to metrics.jsonl only"
        if self.stream.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=self.stream)
        self._t0 = time.time()

    def log(self, step: int, values: dict) -> None:
        """Record ``values`` at ``step`` (metrics.jsonl, TensorBoard) and show the progress line."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        self._skipped += int(values.get("skipped_images", 0))
        self._show(step, values, self._skipped)

    def show(self, step: int, values: dict) -> None:
        """Only the progress line (nothing recorded): the early line before the first log interval."""
        if self.enabled:
            self._show(step, values, self._skipped + int(values.get("skipped_images", 0)))

    def _show(self, step: int, values: dict, skipped: int) -> None:
        short = (f"loss {values.get('loss', float('nan')):.4f}  lr {values.get('lr', 0):.3g}  "
                 f"{values.get('images_per_sec', 0):.1f} img/s  wait {values.get('data_wait_fraction', 0):.0%}")
        if "probe_miou" in values:
            short += f"  probe mIoU {100 * values['probe_miou']:.1f}"
        if skipped:
            short += f"  skipped {skipped} unreadable"
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(short, refresh=True)
        else:
            elapsed = time.time() - self._t0
            done = step - self.start_step
            eta = elapsed / done * max(self.total_steps - step, 0) if done > 0 else 0.0
            print(f"step {step}/{self.total_steps}  epoch {values.get('epoch', 0)}  {short}  eta {eta / 60:.1f} min",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Drop the records after ``last_step`` from a metrics.jsonl file (a resumed run replays
    the steps after its checkpoint, and their records would otherwise appear twice); a torn
    last line left by a killed process goes too. Returns the number of records dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if record.get("step", 0) > last_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return dropped
