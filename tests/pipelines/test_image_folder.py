from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.image_folder import is_image_file, list_images, scan_image_folder


def _img(path: Path, fmt: str = "JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, fmt)


def test_imagefolder_layout_labels_sorted(tmp_path):
    _img(tmp_path / "dog" / "b.jpg")
    _img(tmp_path / "dog" / "a.JPEG")
    _img(tmp_path / "cat" / "nested" / "z.png", "PNG")
    _img(tmp_path / "cat" / "y.webp", "WEBP")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _img(tmp_path / "cat" / "y.labels.png", "PNG")   # a label map, not an image
    _img(tmp_path / "dog" / ".hidden.jpg")
    _img(tmp_path / ".cache" / "c.jpg")
    images = scan_image_folder(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in images.paths]
    assert rel == ["cat/nested/z.png", "cat/y.webp", "dog/a.JPEG", "dog/b.jpg"]
    assert images.classes == ("cat", "dog")
    assert images.labels == (0, 0, 1, 1)
    assert list_images(tmp_path) == list(images.paths)


def test_flat_layout_is_unlabelled(tmp_path):
    for name in ("3.jpg", "1.jpg", "2.png"):
        _img(tmp_path / name, "PNG" if name.endswith("png") else "JPEG")
    images = scan_image_folder(tmp_path)
    assert [p.name for p in images.paths] == ["1.jpg", "2.png", "3.jpg"]
    assert images.labels == (-1, -1, -1) and images.classes == ()


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_image_folder(missing)


def test_empty_folder_names_the_path(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    _img(tmp_path / "empty" / "only.labels.png", "PNG")
    with pytest.raises(FileNotFoundError, match="empty"):
        scan_image_folder(tmp_path / "empty")


def test_file_instead_of_folder(tmp_path):
    _img(tmp_path / "a.jpg")
    with pytest.raises(NotADirectoryError, match="a.jpg"):
        scan_image_folder(tmp_path / "a.jpg")


def test_is_image_file():
    assert is_image_file("x.JPG") and is_image_file("x.webp") and is_image_file("x.jpeg")
    assert not is_image_file("x.labels.png") and not is_image_file(".x.jpg") and not is_image_file("x.gif")
