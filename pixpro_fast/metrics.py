"""Training metrics: JSONL always, TensorBoard when installed, a progress bar on a terminal
and plain lines otherwise; and the loader-bound / compute-bound verdict."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


COMPUTE_REMEDIES = ("bf16 autocast", "channels-last", "torch.compile", "a larger batch per device")


def verdict(wait_fraction: float, threshold: float = 0.10, in_use: tuple[str, ...] = ()) -> str:
    """Say whether a run is loader-bound, from the fraction of wall time spent waiting for data.
    ``in_use`` names compute remedies (of :data:`COMPUTE_REMEDIES`) the run already has, so
    they are not suggested again."""
    if wait_fraction >= threshold:
        return (f"loader-bound: {wait_fraction:.0%} of wall time waiting for data "
                "(remedies: more loader workers, a faster backend such as dali or ffcv, "
                "smaller stored images, or fewer CPU-side augmentations)")
    remedies = [r for r in COMPUTE_REMEDIES if r not in in_use]
    return f"compute-bound: {wait_fraction:.0%} of wall time waiting for data (remedies: {', '.join(remedies)})"


class MetricsLogger:
    def __init__(self, out_dir: str | Path, total_steps: int, enabled: bool = True, tensorboard: bool = True,
                 start_step: int = 0, stream=None):
        self.enabled = enabled
        self.total_steps = total_steps
        self.stream = stream or sys.stderr
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        self.tensorboard_note = ""
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
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        short = (f"loss {values.get('loss', float('nan')):.4f}  lr {values.get('lr', 0):.3g}  "
                 f"{values.get('images_per_sec', 0):.1f} img/s  wait {values.get('data_wait_fraction', 0):.0%}")
        if "probe_miou" in values:
            short += f"  probe mIoU {100 * values['probe_miou']:.1f}"
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(short, refresh=True)
        else:
            elapsed = time.time() - self._t0
            done = max(step, 1)
            eta = elapsed / done * max(self.total_steps - step, 0) if step else 0.0
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
