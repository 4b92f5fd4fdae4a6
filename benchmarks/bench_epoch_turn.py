"""The torch backend at an epoch's end: persistent workers that read on into the next epoch
against the same workers started afresh on each epoch's first batch.

A stand-in consumer takes a fixed time per batch (a training step slower than the loader,
as on a GPU host): it waits for data only where the loader falls behind. Restarted at each
epoch, the workers deliver their first batches of the new epoch only after a whole batch
each, so the consumer waits at every turn; read on, they have the next epoch's batches ready.
Both modes run interleaved over the same files with the same workers count; the table gives
the wait at the epoch turns, the wait inside epochs and the fraction of time spent waiting.

    python -m benchmarks.bench_epoch_turn --images 256 --batch-size 16 --workers 2 --epochs 4
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import add_shared_options, markdown_table, sync, write_json
from pipelines.recipe import get_recipe
from pipelines.scenes import ensure_scenes
from pipelines.torch_loader import build_torch_loader

MODES = ("restart each epoch", "read on")


def consume(loader, epochs: int, step_s: float, device="cpu") -> tuple[list[float], list[float]]:
    """Waits (seconds) at the first batch of each epoch after the first, and inside epochs,
    for a consumer that spends ``step_s`` on each batch. Epoch 0 (workers starting) is not counted."""
    turns, inside = [], []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        it = iter(loader)
        for i in range(len(loader)):   # as the training engine: the epoch's batches by count
            next(it)
            sync(device)
            if epoch > 0:
                (inside if i else turns).append(time.perf_counter() - t0)
            time.sleep(step_s)
            t0 = time.perf_counter()
        it.close()
    return turns, inside


def run(data_dir, batch_size: int = 16, image_size: int = 224, workers: int = 2, epochs: int = 4,
        rounds: int = 2, step_factor: float = 1.5, recipe: str = "byol", device: str = "cpu", log=print) -> dict:
    """``step_factor``: the stand-in step's time over the loader's own time per batch (measured
    first, read-on mode, no consumer)."""
    def loader(mode):
        made = build_torch_loader(data_dir, batch_size, image_size, get_recipe(recipe), num_workers=workers,
                                  device=device)
        made.plan.run_on = mode == "read on"
        return made

    probe = loader("read on")
    _, alone = consume(probe, 1, 0.0, device)
    probe.close()
    step_s = step_factor * statistics.median(alone)
    waits = {m: {"turns": [], "inside": []} for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            made = loader(mode)
            turns, inside = consume(made, epochs, step_s, device)
            made.close()
            waits[mode]["turns"] += turns
            waits[mode]["inside"] += inside
            log(f"round {r + 1}/{rounds} {mode}: median wait {1e3 * statistics.median(turns):.1f} ms at the "
                f"turns, {1e3 * statistics.median(inside):.1f} ms inside epochs")
    rows = []
    for mode, w in waits.items():
        steps = len(w["turns"]) + len(w["inside"])
        wall = sum(w["turns"]) + sum(w["inside"]) + steps * step_s
        rows.append({"mode": mode, "median_turn_wait_ms": 1e3 * statistics.median(w["turns"]),
                     "median_inside_wait_ms": 1e3 * statistics.median(w["inside"]),
                     "wait_fraction": (sum(w["turns"]) + sum(w["inside"])) / wall,
                     "turn_waits_s": w["turns"], "inside_waits_s": w["inside"]})
    return {"benchmark": "epoch_turn", "data_dir": str(data_dir), "batch_size": batch_size, "image_size": image_size,
            "workers": workers, "epochs": epochs, "rounds": rounds, "recipe": recipe, "device": device,
            "batches_per_epoch": len(probe), "step_s": step_s, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="image folder (default: the built-in scenes)")
    ap.add_argument("--images", type=int, default=256, help="scenes to generate when no --data-dir")
    add_shared_options(ap, batch_size=16, image_size=224, device="cpu", rounds=2, out="bench_out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4, help="timed epochs per mode and round (after one untimed)")
    ap.add_argument("--step-factor", type=float, default=1.5,
                    help="the stand-in step's time over the loader's time per batch")
    ap.add_argument("--recipe", default="byol")
    args = ap.parse_args(argv)
    data_dir = args.data_dir or ensure_scenes(args.images)
    result = run(data_dir, args.batch_size, args.image_size, args.workers, args.epochs, args.rounds,
                 args.step_factor, args.recipe, args.device)
    print(f"\n{result['batches_per_epoch']} batches of {args.batch_size} per epoch, {args.workers} workers, "
          f"stand-in step {1e3 * result['step_s']:.0f} ms")
    print(markdown_table(result["rows"], ["mode", "median_turn_wait_ms", "median_inside_wait_ms", "wait_fraction"]))
    print("wrote", write_json(args.out, "epoch_turn.json", result))
    return result


if __name__ == "__main__":
    main()
