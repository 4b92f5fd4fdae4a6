"""Scan a folder tree of images into a sorted, deterministic file list (backend-neutral).

Two layouts are understood:

- ImageFolder: ``root/<class>/.../*.jpg``; the class of a file is the first folder under
  ``root``; classes are numbered in sorted order.
- flat: ``root/*.jpg`` (or any tree without class folders); files directly under ``root``
  get label -1.

Extensions: .jpg .jpeg .png .webp (any case). Hidden files and folders and per-pixel label
maps (``*.labels.png``, written beside the images of the built-in scenes dataset) are
ignored. Order is the sorted relative POSIX path, so every backend and every rank sees the
same index for the same file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
LABEL_MAP_SUFFIX = ".labels.png"


def is_image_file(name: str) -> bool:
    lower = name.lower()
    return (not lower.startswith(".") and lower.endswith(IMAGE_EXTENSIONS)
            and not lower.endswith(LABEL_MAP_SUFFIX))


@dataclass(frozen=True)
class ImageList:
    """The scanned dataset: ``paths[i]`` has class ``labels[i]`` (-1 when unlabelled)."""
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def _check_root(root: str | Path) -> Path:
    if root is None:
        raise ValueError("an image folder is required (data_dir is None)")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} is not a directory")
    return root


def _relative_image_paths(root: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, root)
        for name in files:
            if is_image_file(name):
                found.append(name if rel == "." else Path(rel, name).as_posix())
    found.sort()
    return found


def scan_image_folder(root: str | Path) -> ImageList:
    """Scan ``root``; raises FileNotFoundError naming the folder when it is missing or holds no images."""
    root = _check_root(root)
    rel_paths = _relative_image_paths(root)
    if not rel_paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    class_of = [p.split("/", 1)[0] if "/" in p else None for p in rel_paths]
    classes = tuple(sorted({c for c in class_of if c is not None}))
    number = {c: i for i, c in enumerate(classes)}
    labels = tuple(number[c] if c is not None else -1 for c in class_of)
    return ImageList(root=root, paths=tuple(root / p for p in rel_paths), labels=labels, classes=classes)


def list_images(root: str | Path) -> list[Path]:
    """Sorted image paths under ``root`` (see :func:`scan_image_folder`)."""
    return list(scan_image_folder(root).paths)
