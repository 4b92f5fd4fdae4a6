"""Checkpoint files: written atomically, named by step, the newest K kept; what a crash can
leave behind (partial writes, a damaged newest file) is cleaned up or stepped over."""
from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")
_PARTIAL = re.compile(r"^\.ckpt_\d{9}\.pt\.tmp(\d+)$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"ckpt_{step:09d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints in ``out_dir``, oldest first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(obj, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash mid-write never leaves a truncated checkpoint under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_partial_writes(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes whose process is gone (a run killed
    mid-write); returns what was removed."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    removed = []
    for p in d.iterdir():
        m = _PARTIAL.match(p.name)
        if m and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for want of disk space; the older ones are intact."""


def _out_of_space(exc: BaseException | None) -> bool:
    # torch.save reports a full disk as a RuntimeError raised while handling the OSError
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def state_bytes(state: dict) -> int:
    """The bytes of the tensors a checkpoint of ``state`` holds (about its file size)."""
    return sum(t.numel() * t.element_size() for _, t in named_tensors(state))


def check_disk_space(out_dir: str | Path, state: dict, keep: int) -> str | None:
    """Before a run: CheckpointWriteError when ``out_dir``'s disk cannot hold one checkpoint
    of ``state`` (the run would lose everything up to its first checkpoint), a note when it
    cannot hold the ``keep`` kept ones and the one being written; else None. Before the first
    step an optimiser holds no state yet, so the size is a lower bound."""
    existing = Path(out_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    free, need = shutil.disk_usage(existing).free, max(1, state_bytes(state))
    mib = need / 2**20
    if free < need:
        raise CheckpointWriteError(errno.ENOSPC, f"{out_dir} has {free / 2**20:.0f} MiB free, and one checkpoint of "
                                                 f"this run needs at least {mib:.0f} MiB: free some space or give "
                                                 f"another --out")
    if free < need * (keep + 1):
        return (f"note: {out_dir} has room for {free // need} checkpoint(s) of at least {mib:.0f} MiB; the run "
                f"keeps {keep} and writes each new one before deleting the oldest (lower --keep-ckpts or free space)")
    return None


def _disk_full_message(path: Path, state: dict) -> str:
    free = shutil.disk_usage(path.parent).free
    need = state_bytes(state)
    older = list_checkpoints(path.parent)
    kept = (f"the newest checkpoint written, {older[-1].name}, is intact; free some space and run the same "
            f"command again to continue from it" if older else "no earlier checkpoint exists in this folder")
    return (f"cannot write checkpoint {path}: the disk is full ({free / 2**20:.0f} MiB free, the checkpoint "
            f"needs about {need / 2**20:.0f} MiB); {kept}")


def save_checkpoint(state: dict, out_dir: str | Path, step: int, keep: int) -> Path:
    """Write step ``step``'s checkpoint, then delete all but the newest ``keep``. A full disk
    raises CheckpointWriteError, which says how much space it needs, with no partial file left
    and nothing older deleted."""
    target = checkpoint_path(out_dir, step)
    try:
        path = save_atomic(state, target)
    except Exception as exc:
        if not _out_of_space(exc):
            raise
        raise CheckpointWriteError(errno.ENOSPC, _disk_full_message(target, state)) from exc
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


class UnsafeCheckpointError(ValueError):
    """A file holds pickled objects beyond tensors, numbers, strings and plain containers:
    unpickling them could run code, so it is never loaded."""


def _legacy_numpy_globals() -> list:
    """What a NumPy array inside a checkpoint needs to be rebuilt: the array and dtype types
    and NumPy's reconstructor, none of which runs code. Checkpoints written before the RNG
    state was stored as tensors hold NumPy's generator state as an array."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:   # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (a library's reason, without its advice)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _refused_global(message: str) -> str | None:
    """The ``module.name`` torch's weights-only unpickler refused, from its message."""
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"[Uu]nsupported class ([\w.]+)", message)
    return m.group(1) if m else None


def safe_load(path: str | Path, what: str = "checkpoint"):
    """``torch.load`` of a file someone else may have made, with no code run from it: only
    tensors, numbers, strings, plain containers (and NumPy arrays) are rebuilt.

    FileNotFoundError when missing; :class:`UnsafeCheckpointError` for a file that carries
    other pickled objects (naming the first one); ValueError for a truncated or foreign file.
    Each message is one line naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()), warnings.catch_warnings():
            # a foreign file's odd pickle protocol: the error that follows says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        message = str(e)
        found = _refused_global(message) if "Weights only load failed" in message else None
        if found:
            raise UnsafeCheckpointError(
                f"refusing to load {what} {path}: it holds pickled Python objects ({found}), not only tensors, "
                f"numbers, strings and plain containers; loading them could run code the file carries. "
                f"pixpro_fast writes and loads weights only: ask for the file as a pixpro_fast checkpoint or "
                f"export (.pt, .safetensors)") from None
        reason = next((part.strip() for part in message.split("\n\n")[1:] if part.strip()), None) \
            if "Weights only load failed" in message else None   # the reason, not torch's advice
        raise ValueError(f"cannot read {what} {path}: {(reason or first_line(e)).splitlines()[0]}") from None


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded with :func:`safe_load` (nothing in it can run code)."""
    state = safe_load(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"cannot read checkpoint {path}: it holds no training state")
    return state


def load_newest_intact(out_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of ``out_dir`` that loads. A damaged one (truncated under its final
    name by a full disk or an interrupted copy) is renamed ``*.damaged`` with a warning, and the
    next older one is tried; None when no checkpoint is left. A file that would run code
    when loaded is not stepped over: :class:`UnsafeCheckpointError`."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path)
        except UnsafeCheckpointError:
            raise   # not damaged: someone else's file, which the user must look at
        except ValueError as e:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            log.warning("%s; moved it to %s and trying the next older checkpoint", e, aside.name)
    return None


def named_tensors(tree, prefix: str = ""):
    """(name, tensor) for every tensor in a nested dict/list/tuple, names as ``a.b[0]``."""
    if isinstance(tree, torch.Tensor):
        yield prefix or "tensor", tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from named_tensors(v, f"{prefix}[{i}]")


def non_finite_entries(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold a NaN or an inf."""
    return [name for name, t in named_tensors(tree, prefix)
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def archive_previous_run(out_dir: str | Path) -> Path | None:
    """Move an earlier run's checkpoints, metrics and TensorBoard logs out of the way, into
    ``out_dir/previous-<time>/``, so a fresh run in the same folder neither deletes nor mixes
    with them. None when there was nothing to move."""
    d = Path(out_dir)
    items = list_checkpoints(d) + [p for p in (d / "metrics.jsonl", d / "tb") if p.exists()]
    if not items:
        return None
    dest = d / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while dest.exists():
        dest = d / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        n += 1
    dest.mkdir()
    for p in items:
        shutil.move(str(p), dest / p.name)
    return dest


def rng_state() -> dict:
    """Every generator's state as tensors and numbers, so a checkpoint loads weights-only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s generators; also reads the tuples older checkpoints hold."""
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
    if isinstance(npy, dict):
        npy = (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
               npy["cached_gaussian"])
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
