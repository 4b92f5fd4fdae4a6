"""The .beton writer: what it keeps, leaves out and says, its page size, its refusals.
Skipped where FFCV is not installed."""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.batch import keep_torch_threads

with keep_torch_threads():  # importing ffcv sets torch's thread count to 1 for the whole process
    pytest.importorskip("ffcv")

from coordinate_plane import write_coordinate_planes  # noqa: E402
from pipelines import ffcv_loader as FL  # noqa: E402
from pipelines import ffcv_writer as FW  # noqa: E402


def test_a_missing_ffcv_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv", None)
    with pytest.raises(ImportError, match=r"pip install \.\[ffcv\]"):
        FW.require_ffcv()


def test_writer_reports_skipped_images_and_refuses_overwrite(folder, folder_beton, tmp_path, capsys):
    import shutil
    from ffcv.reader import Reader
    reader = Reader(str(folder_beton))
    assert int(reader.num_samples) == 24
    names = list(reader.handlers)
    labels = np.asarray(reader.metadata[f"f{names.index('label')}"]).reshape(-1)
    index = np.asarray(reader.metadata[f"f{names.index('index')}"]).reshape(-1)
    listing = FW.scan_image_folder(folder)
    assert [listing.labels[i] for i in index] == labels.tolist()
    assert set(labels.tolist()) == {0, 1}

    folder_beton = Path(shutil.copy(folder_beton, tmp_path / "copy.beton"))   # the shared file stays as it is
    capsys.readouterr()
    before = folder_beton.stat().st_mtime_ns
    assert FW.main(["--data", str(folder), "--out", str(folder_beton), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "--force" in err
    assert folder_beton.stat().st_mtime_ns == before

    assert FW.main(["--data", str(folder), "--out", str(folder_beton), "--quiet", "--force",
                    "--num-workers", "1", "--max-resolution", "64"]) == 0
    out = capsys.readouterr().out
    assert "wrote 24 images" in out and "skipped 2 unreadable image(s)" in out
    assert "broken.jpg" in out and "truncated.jpg" in out
    reader = Reader(str(folder_beton))
    image_meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    assert int(np.maximum(image_meta["width"], image_meta["height"]).max()) == 64


def test_writer_leaves_out_images_above_its_pixel_cap(folder, tmp_path, capsys):
    out = tmp_path / "capped.beton"
    capsys.readouterr()
    assert FW.main(["--data", str(folder), "--out", str(out), "--quiet", "--num-workers", "1",
                    "--max-pixels", "6000"]) == 0   # only img_00 (90 x 60) is within it
    text = capsys.readouterr().out
    assert "wrote 1 images" in text and "skipped 25 unreadable image(s)" in text
    assert "img_01.jpg: 93 x 67 = 0.0062 megapixels, above the 0.006-megapixel cap (max_pixels)" in text


def test_writer_with_nothing_readable(tmp_path):
    (tmp_path / "only.jpg").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="could be decoded"):
        FW.write_beton(tmp_path, tmp_path / "x.beton", num_workers=1, progress=False)
    assert not (tmp_path / "x.beton").exists()


def test_writer_pages_fit_the_images(tmp_path):
    """Pages are sized from the folder's largest image: a folder of small images written at
    full resolution is a small file, and an image whose raw pixels outgrow FFCV's default
    page still round-trips unchanged."""
    from ffcv.reader import Reader
    small, large = tmp_path / "small", tmp_path / "large"
    write_coordinate_planes(small, [(48, 64), (64, 48)])
    out = tmp_path / "small.beton"
    FW.write_beton(small, out, max_resolution=0, num_workers=1, progress=False)
    assert int(Reader(str(out)).page_size) == 1 << 23
    assert out.stat().st_size <= 3 << 23

    large.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 2100, 3), dtype=np.uint8)  # 9.45 MB raw
    Image.fromarray(pixels).save(large / "big.png")
    out = tmp_path / "large.beton"
    FW.write_beton(large, out, max_resolution=0, write_mode="raw", num_workers=1, progress=False)
    reader = Reader(str(out))
    assert int(reader.page_size) == 1 << 25
    offset, size = FL.stored_image_span(reader, 0)
    assert size == pixels.nbytes
    stored = np.fromfile(out, dtype=np.uint8, count=size, offset=offset).reshape(pixels.shape)
    assert np.array_equal(stored, pixels)


def test_the_default_cap_keeps_a_huge_image_out_of_the_file_undecoded(tmp_path, monkeypatch):
    """A 12000 x 12000 PNG beside small JPEGs is left out by the writer from its header alone,
    and its report names it with its size."""
    from PIL import ImageFile
    from sample_data import black_png, jpeg_folder
    folder = jpeg_folder(tmp_path / "img", 3, (40, 50), (8, 8))
    (folder / "huge.png").write_bytes(black_png(12000, 12000))
    load = ImageFile.ImageFile.load

    def small_only(img):
        assert img.size[0] * img.size[1] <= 1_000_000, f"decoded an image of {img.size}"
        return load(img)
    monkeypatch.setattr(ImageFile.ImageFile, "load", small_only)
    report = FW.write_beton(folder, tmp_path / "x.beton", max_resolution=0, num_workers=1, progress=False)
    assert report.written == 3
    assert report.skipped == [(str(folder / "huge.png"),
                               "12000 x 12000 = 144.0 megapixels, above the 50-megapixel cap (max_pixels)")]
