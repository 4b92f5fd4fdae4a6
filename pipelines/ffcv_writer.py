"""Turn an image folder into an FFCV ``.beton`` file for the ``ffcv`` loader backend.

    python -m pipelines.ffcv_writer --data DIR --out FILE.beton --max-resolution 512 \\
        --jpeg-quality 90 [--num-workers N] [--write-mode jpg] [--max-pixels N] [--force]

Fields: ``image`` (RGBImageField, longer side at most ``max_resolution``), ``index`` (the
file's position in :func:`pipelines.image_folder.list_images` order, so batches can be
traced back to files whatever was skipped) and ``label`` (class number, -1 when the folder
has no class sub-folders).

Two passes: a quick check decodes every file (JPEGs at 1/8 scale through libjpeg's DCT
scaling) so that unreadable files, and those whose header declares more than
``max_pixels`` pixels (:mod:`pipelines.image_header`; never decoded), are left out and
reported by name with the reason, then FFCV's ``DatasetWriter`` decodes, resizes and
encodes the rest in its worker processes. The file is written under a temporary name and
moved into place at the end, so an interrupted run never leaves a truncated ``.beton``
behind, and an existing file is only replaced with ``force``.
"""
from __future__ import annotations

import argparse
import functools
import gc
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .corrupt import plain_reason
from .decode import to_rgb
from .image_folder import scan_image_folder
from .image_header import DEFAULT_MAX_PIXELS, ImageTooLarge, check_max_pixels, open_image

WRITE_MODES = ("jpg", "raw", "smart", "proportion")
FFCV_INSTALL_HINT = ("FFCV is not installed: install the system libraries first "
                     "(Debian/Ubuntu: apt-get install -y libturbojpeg0-dev libopencv-dev pkg-config), "
                     "then `pip install .[ffcv]`")


def require_ffcv():
    """Import ffcv or fail with the install instructions."""
    try:
        import ffcv  # noqa: F401
        from ffcv.fields import IntField, RGBImageField  # noqa: F401
        from ffcv.writer import DatasetWriter  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{FFCV_INSTALL_HINT} ({exc})") from exc
    return ffcv


@dataclass
class WriteReport:
    out: Path
    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    classes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"wrote {self.written} images to {self.out}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------- decoding

def load_rgb(path: str | Path, max_resolution: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode to an RGB uint8 array. JPEGs are decoded with libjpeg's DCT scaling down to the
    smallest size that still keeps the longer side >= ``max_resolution`` (FFCV's own area
    resize takes it the rest of the way). Above the pixel cap: ImageTooLarge, undecoded."""
    with open_image(Path(path).read_bytes(), max_pixels) as img:
        if max_resolution and img.format == "JPEG":
            w, h = img.size
            s = max_resolution / max(w, h)
            if s < 1:
                img.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
        img.load()
        return np.asarray(to_rgb(img))


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str | None, tuple[int, int]]:
    """(None, (width, height)) when ``path`` decodes within the pixel cap, else (the reason it
    does not, (0, 0))."""
    try:
        with open_image(Path(path).read_bytes(), max_pixels) as img:
            size = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            arr = np.asarray(to_rgb(img))
        if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
            return f"unexpected decoded shape {arr.shape}", (0, 0)
        return None, size
    except ImageTooLarge as exc:
        return str(exc), (0, 0)
    except Exception as exc:  # PIL raises many types for damaged files
        return plain_reason(f"{type(exc).__name__}: {exc}"), (0, 0)


class _FolderSource:
    """Indexable source for FFCV's DatasetWriter: (image, index, label) per valid file.

    A file that fails here (after passing the check) must not raise: an exception inside a
    DatasetWriter worker leaves the parent waiting forever. It yields a grey placeholder
    and leaves a note in ``failure_dir`` (a file per failure: visible to the parent as soon
    as it is written, whichever way the workers were started); the writer then discards
    the output file.
    """

    def __init__(self, paths: list[str], indices: list[int], labels: list[int], max_resolution: int | None,
                 failure_dir: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.indices, self.labels = paths, indices, labels
        self.max_resolution, self.failure_dir, self.max_pixels = max_resolution, failure_dir, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.paths[i], self.max_resolution, self.max_pixels)
        except Exception as exc:
            Path(self.failure_dir, f"{i}.txt").write_text(f"{self.paths[i]}\n{type(exc).__name__}: {exc}")
            img = np.full((8, 8, 3), 128, dtype=np.uint8)
        return img, self.indices[i], self.labels[i]


# --------------------------------------------------------------------------- writing

def _check_all(paths: list[str], num_workers: int, progress: bool,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[str | None, tuple[int, int]]]:
    bar = dict(total=len(paths), desc="checking images", unit="img", disable=not progress)
    check = functools.partial(check_image, max_pixels=max_pixels)
    if num_workers <= 1:
        return [check(p) for p in tqdm(paths, **bar)]
    with mp.Pool(num_workers) as pool:
        return list(tqdm(pool.imap(check, paths, chunksize=16), **bar))


def _page_size(sizes: list[tuple[int, int]], max_resolution: int | None) -> int:
    """FFCV stores a sample within one page, and every writer process fills whole pages: pages
    large enough for the biggest image as raw pixels (twice over), but no larger, or a small
    folder written at full resolution becomes a file of a few huge, mostly empty pages."""
    def stored_pixels(w: int, h: int) -> int:
        s = min(1.0, max_resolution / max(w, h)) if max_resolution else 1.0
        return math.ceil(w * s) * math.ceil(h * s)
    need = 3 * max(stored_pixels(w, h) for w, h in sizes) * 2
    return max(1 << 23, 1 << math.ceil(math.log2(need)))


def write_beton(data_dir: str | Path, out: str | Path, max_resolution: int | None = 512, jpeg_quality: int = 90,
                num_workers: int | None = None, force: bool = False, write_mode: str = "jpg",
                compress_probability: float = 0.5, chunk_size: int = 100, progress: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> WriteReport:
    """Write the images under ``data_dir`` to ``out``; returns what was written and skipped
    (unreadable files, and those of more than ``max_pixels`` pixels; 0: no cap).

    Raises FileExistsError when ``out`` exists and ``force`` is False, FileNotFoundError when
    the folder has no images (or none readable).
    """
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"refusing to overwrite {out}: it already exists (pass --force to replace it)")
    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give a file name such as {out / 'train.beton'}")
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must lie in [1, 100], got {jpeg_quality}")
    check_max_pixels(max_pixels)
    if max_resolution is not None and max_resolution <= 0:
        max_resolution = None
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    listing = scan_image_folder(data_dir)
    num_workers = max(1, num_workers if num_workers is not None else (os.cpu_count() or 1))
    paths = [str(p) for p in listing.paths]
    gc.collect()  # finalise garbage here, not in the forked workers (a finaliser may hang in a child)
    checked = _check_all(paths, num_workers, progress, max_pixels)
    reasons = [r for r, _ in checked]
    skipped = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    keep = [i for i, r in enumerate(reasons) if r is None]
    if not keep:
        raise FileNotFoundError(f"none of the {len(paths)} images under {listing.root} could be decoded")

    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                               compress_probability=compress_probability),
        "index": IntField(),
        "label": IntField(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    failure_dir = tempfile.mkdtemp(prefix="ffcv_writer_")
    source = _FolderSource([paths[i] for i in keep], keep, [listing.labels[i] for i in keep], max_resolution,
                           failure_dir, max_pixels)
    try:
        page_size = _page_size([checked[i][1] for i in keep], max_resolution)
        writer = DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=num_workers)
        # DatasetWriter draws its own tqdm bar; silence it with the rest when asked
        with _maybe_silenced(not progress):
            writer.from_indexed_dataset(source, chunksize=chunk_size)
        late = [tuple(f.read_text().split("\n", 1)) for f in sorted(Path(failure_dir).iterdir())]
        if late:
            names = "\n".join(f"  {p}: {r}" for p, r in late)
            raise RuntimeError(f"{len(late)} image(s) passed the check but failed while writing; "
                               f"nothing was written to {out}:\n{names}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
        shutil.rmtree(failure_dir, ignore_errors=True)
    return WriteReport(out=out, written=len(keep), skipped=skipped, classes=listing.classes)


class _maybe_silenced:
    """Send stderr (tqdm) to /dev/null inside the block when ``on``."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            sys.stderr.flush()
            self._saved = os.dup(2)
            self._null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(self._null, 2)

    def __exit__(self, *exc):
        if self.on:
            sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            os.close(self._null)


# --------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.ffcv_writer", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="image folder (ImageFolder layout or flat)")
    ap.add_argument("--out", required=True, help="the .beton file to write")
    ap.add_argument("--max-resolution", type=int, default=512,
                    help="longer side of the stored images (0 keeps the original size)")
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--write-mode", choices=WRITE_MODES, default="jpg",
                    help="jpg: JPEG-compress every image; raw: store pixels; smart: raw unless large; "
                         "proportion: JPEG-compress a random --compress-probability share")
    ap.add_argument("--compress-probability", type=float, default=0.5)
    ap.add_argument("--num-workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="skip images whose header declares more pixels than this, undecoded (0: no cap)")
    ap.add_argument("--force", action="store_true", help="replace FILE if it exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        report = write_beton(args.data, args.out, args.max_resolution, args.jpeg_quality, args.num_workers,
                             args.force, args.write_mode, args.compress_probability, progress=not args.quiet,
                             max_pixels=args.max_pixels)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError,
            ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
