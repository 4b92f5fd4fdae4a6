"""The policy for unreadable images (pipelines.corrupt): the reason in plain words, the
positions tried in its place, each file reported once, or an error naming it."""
import logging

import pytest

from pipelines.corrupt import CorruptFiles, CorruptImageError, plain_reason, replacement_positions


def test_plain_reason():
    unidentified = "cannot identify image file <_io.BytesIO object at 0x7f12ab>"
    assert plain_reason(unidentified) == "not an image PIL can identify"
    assert plain_reason("UnidentifiedImageError: cannot identify image file '/d/x.jpg'") == \
        "not an image PIL can identify"
    truncated = "image file is truncated (3 bytes not processed)"
    assert plain_reason(truncated) == truncated
    assert plain_reason("") == plain_reason(None) == "unreadable"


def test_the_replacements_are_the_next_positions_of_the_order_wrapping_round():
    assert replacement_positions(3, 10, max_replacements=4) == [3, 4, 5, 6, 7]
    assert replacement_positions(8, 10, max_replacements=4) == [8, 9, 0, 1, 2]


def test_each_unreadable_file_is_reported_once_or_stops_the_run(caplog):
    files = CorruptFiles("skip")
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        for _ in range(3):
            files.report("a.jpg", "cannot identify image file <_io.BytesIO object at 0x7f>")
        files.report("b.jpg", "image file is truncated")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "a.jpg (not an image PIL can identify)" in lines[0] and "b.jpg" in lines[1]
    assert files.bad == {"a.jpg": "not an image PIL can identify", "b.jpg": "image file is truncated"}
    with pytest.raises(CorruptImageError, match="cannot decode image c.jpg: unreadable"):
        CorruptFiles("error").report("c.jpg")
    with pytest.raises(ValueError, match="on_corrupt"):
        CorruptFiles("ignore")
