"""The engine's log window (what a log line averages, what the run's totals add up to), the
data-wait meter and the loader- or compute-bound verdict."""
import math

import torch

from pixpro_fast.metrics import COMPUTE_REMEDIES, MIN_MEASURED_STEPS, LogWindow, WaitMeter, verdict


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_window_sums_its_steps_and_the_run_sums_its_logged_windows():
    clock = Clock()
    win = LogWindow(clock)
    assert math.isnan(win.pending_loss()) and win.images_per_sec == 0.0 and win.wait_fraction == 0.0
    win.add(torch.tensor([2.0, 1.0]), images=8, skipped=1, waited=0.5)
    win.add(torch.tensor([4.0, 3.0]), images=8, skipped=0, waited=0.25)
    assert win.steps == 2 and win.images == 16 and win.skipped == 1 and win.wait == 0.75
    assert win.pending_loss() == 6.0 and win.stats.tolist() == [6.0, 4.0]
    clock.now = 3.0
    win.pause(1.0)   # a probe's second is not training time
    assert clock.now - win.t0 == 2.0
    win.close(loss=3.0, wall=2.0)
    assert win.steps == 0 and win.stats is None and win.probe == {} and win.t0 == 3.0
    assert win.pending_loss() == 3.0   # nothing pending: the last logged loss
    win.add(torch.tensor([1.0, 1.0]), images=4, skipped=0, waited=1.0)
    win.close(loss=1.0, wall=2.0)
    assert win.run_images == 20 and win.run_wall == 4.0 and win.run_wait == 1.75 and win.last_loss == 1.0
    assert win.images_per_sec == 5.0 and win.wait_fraction == 1.75 / 4.0


def test_verdict_gives_only_advice_that_helps_here():
    assert "bf16" in verdict(0.01) and "bf16" not in verdict(0.01, bf16_native=False)
    assert "torch.compile" in verdict(0.01, bf16_native=False)
    ffcv = verdict(0.5, loader="ffcv")
    assert "ffcv" not in ffcv and "dali" in ffcv and "workers" in ffcv
    assert "dali or ffcv" in verdict(0.5, loader="torch")
    assert "after the first 5 steps" in verdict(0.01, warmup_steps=5)
    assert "after the first" not in verdict(0.01)
    assert "torch.compile" not in verdict(0.01, in_use=("torch.compile",))
    assert "larger batch" in verdict(0.01) and "larger batch" not in verdict(0.01, batch_headroom=False)
    assert "more loader workers" not in verdict(0.5, more_workers=False)
    held = verdict(0.01, in_use=COMPUTE_REMEDIES)
    assert held.startswith("compute-bound") and "no remedy left" in held


def test_verdict_needs_enough_measured_steps():
    assert verdict(0.54, measured_steps=1) == ("too few steps to judge loader- or compute-bound "
                                               "(1 measured after the warm-up; at least 20 needed)")
    assert verdict(0.54, measured_steps=MIN_MEASURED_STEPS).startswith("loader-bound")
    assert verdict(0.01, measured_steps=MIN_MEASURED_STEPS - 1).startswith("too few steps")


def test_wait_meter_leaves_out_the_warm_up():
    now = [0.0]
    meter = WaitMeter(warmup=2, clock=lambda: now[0])
    # two slow warm-up steps (9 s waiting each), then three steps of 1 s each with 0.1 s waiting
    for waited, step_s in [(9.0, 10.0), (9.0, 10.0), (0.1, 1.0), (0.1, 1.0), (0.1, 1.0)]:
        now[0] += step_s
        meter.step(waited)
    assert meter.warmup_used == 2
    assert math.isclose(meter.wall, 3.0) and math.isclose(meter.fraction, 0.1)
    short = WaitMeter(warmup=5, clock=lambda: now[0])
    now[0] += 2.0
    short.step(1.0)                          # no step past the warm-up: every step counts
    assert short.warmup_used == 0 and math.isclose(short.fraction, 0.5)
    assert meter.measured == 3 and short.measured == 0
