"""Image sizes from headers, and the pixel cap applied before anything is decoded."""
import io
import re
import struct
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines.corrupt import CorruptImageError
from pipelines.decode import render_views
from pipelines.epoch import EpochOrders
from pipelines.torch_loader import ViewPlanDataset
from pipelines.image_header import (DEFAULT_MAX_PIXELS, ImageTooLarge, check_max_pixels, header_size, image_shape,
                                    open_image)
from pipelines.recipe import BYOL
from sample_data import black_png

HUGE = re.escape("12000 x 12000 = 144.0 megapixels, above the 50-megapixel cap (max_pixels)")


def _encoded(fmt: str, mode: str = "RGB", size=(61, 37), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 40)[:len(mode)]).save(buf, fmt, **kw)
    return buf.getvalue()


def _bmp_header(width: int, height: int) -> bytes:
    """A 1-bit BMP's headers with no pixel data: PIL opens it, and only a load would fail."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 1, 0, 0, 2835, 2835, 2, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 8, 0, 0, 14 + 40 + 8) + info + bytes(8)


@pytest.fixture
def no_decoding(monkeypatch):
    """Any decode (ImageFile.load) fails the test."""
    def load(self):
        raise AssertionError(f"decoded an image of {self.size}")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("fmt, mode, kw", [
    ("JPEG", "RGB", {}), ("JPEG", "L", {"progressive": True}),
    ("JPEG", "RGB", {"icc_profile": b"p" * 70_000}),   # the frame header behind a large segment
    ("PNG", "RGB", {}), ("PNG", "P", {}),
    ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {}),   # VP8, VP8L, VP8X
])
def test_header_size_is_the_size_pil_reads(fmt, mode, kw):
    data = _encoded(fmt, mode, **kw)
    assert header_size(data) == Image.open(io.BytesIO(data)).size == (61, 37)
    assert image_shape(data) == (37, 61)
    assert header_size(np.frombuffer(data, np.uint8)) == (61, 37)


def test_header_size_of_other_formats_and_damage():
    assert header_size(_encoded("GIF", "L")) is None
    assert header_size(_bmp_header(5, 5)) is None
    with pytest.raises(ValueError, match="too short"):
        header_size(b"\xff\xd8\xff")
    jpeg = _encoded("JPEG")
    with pytest.raises(ValueError, match="corrupt JPEG header"):
        header_size(jpeg[:4] + b"\0" * 40 + jpeg[-2:])


def test_the_default_cap_refuses_a_small_file_of_a_huge_image_undecoded(no_decoding, monkeypatch):
    """A 12000 x 12000 PNG of 20 KB (144 megapixels, which PIL warns about) is refused from
    its header before PIL sees it, with no warning; so is a JPEG whose header says so."""
    png = black_png(12000, 12000)
    assert len(png) < 100_000
    jpeg = bytearray(_encoded("JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 12000, 12000)

    def no_open(*args, **kwargs):
        raise AssertionError("PIL opened it")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with monkeypatch.context() as m:
            m.setattr(Image, "open", no_open)
            for data in (png, bytes(jpeg)):
                with pytest.raises(ImageTooLarge, match=HUGE):
                    open_image(data)
        # a format read by PIL alone: checked on the size Image.open found, still undecoded
        with pytest.raises(ImageTooLarge, match=HUGE):
            open_image(_bmp_header(12000, 12000))


def test_the_decoder_and_the_torch_workers_refuse_it_by_name(tmp_path, no_decoding):
    path = tmp_path / "huge.png"
    path.write_bytes(black_png(12000, 12000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match=HUGE):
            render_views(path, BYOL, 32, 0, 0, 0)
        ds = ViewPlanDataset([path], BYOL, 32, EpochOrders(1, 0), on_corrupt="error")
        with pytest.raises(CorruptImageError, match=f"huge.png: {HUGE}"):
            ds.sample(0, 0)


def test_a_cap_above_pils_limit_lifts_it_for_that_open_only():
    png = black_png(12000, 12000)
    limit = Image.MAX_IMAGE_PIXELS
    assert limit < 144_000_000 < 2 * limit   # PIL would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cap in (200_000_000, 0):   # above PIL's limit; no cap at all
            with open_image(png, cap) as img:
                assert img.size == (12000, 12000)
            assert Image.MAX_IMAGE_PIXELS == limit
    with pytest.warns(Image.DecompressionBombWarning):   # PIL's own check still stands outside
        Image.open(io.BytesIO(png)).close()


def test_a_callers_own_pil_limit_is_left_as_it_was(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_image(_encoded("PNG")) as img:   # 2257 pixels: within the cap, above the caller's limit
            img.load()
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_bad_cap_values():
    check_max_pixels(0)
    check_max_pixels(DEFAULT_MAX_PIXELS)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_pixels"):
            check_max_pixels(bad)
