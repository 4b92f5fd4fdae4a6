"""The torch backend: the loader's behaviour (determinism, colour places, resume, persistent
workers, sharding, bad input); the box contract of every backend is tests/pipelines/test_contract.py."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from coordinate_plane import (coordinate_plane, corner_errors, corner_tolerance, denormalise,
                              write_coordinate_planes)
from pipelines import build_loader
from sample_data import jpeg_folder, random_sizes
from pipelines.batch import Batch
from pipelines import sampler
from pipelines.decode import render_views
from pipelines.colour_pil import view_params
from pipelines.recipe import BYOL

GEOMETRY = BYOL.without_colour()
# (height, width): odd and extreme aspects, smaller than the output, and large enough
# that JPEG draft decoding (1/2 .. 1/8 scale) is used for most crops at 64 px
PLANE_SIZES = [(300, 301), (64, 900), (900, 64), (40, 50), (1000, 1400)]


@pytest.fixture(scope="module")
def planes(tmp_path_factory):
    root = tmp_path_factory.mktemp("planes")
    return {fmt: write_coordinate_planes(root / fmt, PLANE_SIZES, fmt) for fmt in ("JPEG",)}


def test_loader_corners_end_to_end(planes):
    """Through the DataLoader, normalisation and channels-last conversion."""
    loader = build_loader("torch", planes["JPEG"][0].parent, batch_size=len(PLANE_SIZES), image_size=64,
                          recipe=GEOMETRY, num_workers=0, seed=5)
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            for view, coords in ((batch.view1, batch.coords1), (batch.view2, batch.coords2)):
                err = corner_errors(denormalise(view, GEOMETRY.mean, GEOMETRY.std), coords)
                for e, i in zip(err, batch.index):
                    h, w = PLANE_SIZES[int(i)]
                    assert e <= corner_tolerance(h, w, 64, True)


# --------------------------------------------------------------------------- loader behaviour

@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return jpeg_folder(tmp_path_factory.mktemp("small"), 10, size=random_sizes(48, 120, seed=1), seed=1, detail=2)


def _collect(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


def _same(a: Batch, b: Batch) -> bool:
    return (torch.equal(a.view1, b.view1) and torch.equal(a.view2, b.view2) and torch.equal(a.coords1, b.coords1)
            and torch.equal(a.coords2, b.coords2) and torch.equal(a.index, b.index))


@pytest.mark.parametrize("colour", ["workers", "pil", "device"])
def test_same_seed_same_batches_any_worker_count(small_dir, colour):
    kw = dict(batch_size=3, image_size=32, seed=7, drop_last=False, colour=colour)
    a = _collect(build_loader("torch", small_dir, num_workers=0, **kw), epoch=2)
    b = _collect(build_loader("torch", small_dir, num_workers=2, **kw), epoch=2)
    assert len(a) == len(b) == 4 and len(a[-1]) == 1
    assert all(_same(x, y) for x, y in zip(a, b))
    c = _collect(build_loader("torch", small_dir, num_workers=0, **{**kw, "seed": 8}), epoch=2)
    assert not _same(a[0], c[0])
    d = _collect(build_loader("torch", small_dir, num_workers=0, **kw), epoch=3)
    assert not torch.equal(torch.cat([x.index for x in a]), torch.cat([x.index for x in d]))


def test_worker_colour_applies_each_samples_draws(small_dir):
    """colour='workers' (the fused pass in each worker): the views equal the geometry-only renders of the same draws finished by
    pipelines.colour's tensor engine (the reference for the float semantics); without
    colour work both modes give the same views."""
    from pipelines.colour import apply_colour
    loader = build_loader("torch", small_dir, batch_size=5, image_size=32, seed=3, num_workers=0, colour="workers")
    batch = _collect(loader, epoch=1)[0]
    ds = loader.dataset
    epoch, positions = next(iter(loader.plan.batches(1, 0)))
    indices = loader.epoch_order(epoch)[list(positions)]
    assert torch.equal(batch.index, torch.as_tensor(indices))
    renders = [render_views(ds.paths[i], BYOL, 32, loader.seed, epoch, i, colour=False, planar=True)
               for i in indices]
    params = [[view_params(r, v) for r, v in zip(rows, BYOL.views)] for _, _, rows in renders]
    assert any(p[0].jitter for p in params) and all(p[0].blur_sigma for p in params)
    for v, got in enumerate((batch.view1, batch.view2)):
        u8 = torch.from_numpy(np.stack([r[0][v] for r in renders]))
        want = apply_colour(u8, sampler.colour_params(np.stack([r[2][v] for r in renders])),
                            BYOL.views[v].solarize_threshold, BYOL.mean, BYOL.std, engine="torch")
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    plain = {c: _collect(build_loader("torch", small_dir, batch_size=5, image_size=32, seed=3, num_workers=0,
                                      recipe=GEOMETRY, colour=c), epoch=1)[0] for c in ("workers", "pil")}
    # the same filter; PIL rounds between its two passes, the numba resize does not: one level at most
    level = 1 / (255 * min(GEOMETRY.std))
    diff = (plain["workers"].view1 - plain["pil"].view1).abs()
    assert diff.max() <= level + 1e-5 and diff.mean() < 0.2 * level
    assert torch.equal(plain["workers"].coords2, plain["pil"].coords2)
    with pytest.raises(ValueError, match=r"colour must be one of \('auto', 'device', 'workers', 'pil'\) for the torch"):
        build_loader("torch", small_dir, batch_size=5, image_size=32, colour="opencv")


def test_device_colour_ships_uint8_crops_and_matches_the_fused_pass(small_dir):
    """colour='device' (the default): workers return uint8 crops,
    the training device does the colour work from the same draws, and the views equal the
    fused worker pass's."""
    kw = dict(batch_size=5, image_size=32, seed=3, num_workers=2)
    assert build_loader("torch", small_dir, **kw).colour == "device"
    on_device = build_loader("torch", small_dir, colour="device", **kw)
    fused = build_loader("torch", small_dir, colour="workers", **kw)
    shipped = on_device.dataset[next(iter(on_device.plan.batches(1, 0)))][0]
    assert [v.dtype for v in shipped] == [torch.uint8] * 2
    assert shipped[0].shape == (5, 3, 32, 32)  # planar, the layout the colour pass reads
    a, b = _collect(on_device, epoch=1), _collect(fused, epoch=1)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.coords1, y.coords1)
        for u, w in zip((x.view1, x.view2), (y.view1, y.view2)):
            assert u.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(u, w, atol=2e-4, rtol=0)


def test_resume_continues_the_sequence(small_dir):
    loader = build_loader("torch", small_dir, batch_size=2, image_size=32, seed=1, num_workers=2,
                          persistent_workers=True)
    full = _collect(loader, epoch=4)
    resumed = _collect(loader, epoch=4, start=3)
    assert len(full) == 5 and len(resumed) == 2
    assert all(_same(x, y) for x, y in zip(full[3:], resumed))
    again = list(loader)  # a pass without set_epoch follows on: the next epoch, from its start
    assert len(again) == 5 and all(_same(x, y) for x, y in zip(again, _collect(loader, epoch=5)))
    with pytest.raises(ValueError):
        loader.set_epoch(0, 6)


class _CountedStarts:
    """A DataLoader stand-in that counts how often a pass (re)starts its batch stream."""

    def __init__(self, loader):
        object.__setattr__(self, "loader", loader)
        object.__setattr__(self, "starts", 0)

    def __iter__(self):
        object.__setattr__(self, "starts", self.starts + 1)
        return iter(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __setattr__(self, name, value):
        setattr(self.loader, name, value)


def test_persistent_workers_read_on_into_the_next_epoch(small_dir):
    """With persistent workers one stream of batches runs across passes (the workers start the
    next epoch while this one ends); the batches are those of separate passes, and a pass that
    starts elsewhere (set_epoch, after an abandoned pass) restarts the stream there."""
    kw = dict(batch_size=2, image_size=32, seed=1)
    ref = build_loader("torch", small_dir, num_workers=0, **kw)
    loader = build_loader("torch", small_dir, num_workers=2, **kw)
    assert loader.plan.run_on and not ref.plan.run_on
    spy = loader._loader = _CountedStarts(loader._loader)
    starts = []
    for step in ("pass", "pass", "counted", (1, 3), "pass", "partial", "pass"):
        if isinstance(step, tuple):
            loader.set_epoch(*step)
            ref.set_epoch(*step)
        if step == "partial":
            got, want = [next(iter(loader))], [next(iter(ref))]
        elif step == "counted":   # a training loop's way: take len(loader) batches, drop the iterator
            it = iter(loader)
            got, want = [next(it) for _ in range(len(loader))], list(ref)
            it.close()
        else:
            got, want = list(loader), list(ref)
        assert len(got) == len(want) > 0 and all(_same(x, y) for x, y in zip(got, want)), step
        starts.append(spy.starts)
    # epochs 0, 1 and 2 (its last batch taken, the iterator then dropped) read on; set_epoch(1, 3)
    # restarts; epoch 2 reads on; the partial pass of epoch 3 reads on; the pass after it
    # (epoch 4) restarts (an abandoned pass stops the workers)
    assert starts == [1, 1, 1, 2, 2, 2, 3]
    assert ref.cursor.epoch == loader.cursor.epoch == 4


def test_workers_outlive_a_stop_signal_sent_to_the_whole_job(small_dir):
    """SIGTERM and SIGUSR1 from another process (Slurm and torchrun signal every process of a
    job; the training process handles them) leave the workers reading the same batches; the
    owner still stops them, also when it exits with them running (multiprocessing's shutdown
    sends them SIGTERM), which must not hang."""
    import subprocess
    import sys
    from pathlib import Path
    kw = dict(batch_size=2, image_size=32, seed=1)
    ref = build_loader("torch", small_dir, num_workers=0, **kw)
    want = _collect(ref, epoch=0) + _collect(ref, epoch=1)
    loader = build_loader("torch", small_dir, num_workers=2, **kw)
    loader.set_epoch(0)
    it = iter(loader)
    got = [next(it)]
    pids = [str(w.pid) for w in loader._loader._iterator._workers]
    for name in ("TERM", "USR1"):
        subprocess.run(["kill", "-s", name, *pids], check=True)
    got += list(it) + _collect(loader, epoch=1)
    assert len(got) == len(want) and all(_same(x, y) for x, y in zip(got, want))
    code = ("import sys; from pipelines import build_loader; "
            f"loader = build_loader('torch', {str(small_dir)!r}, num_workers=2, batch_size=2, image_size=32); "
            "next(iter(loader)); sys.exit(3)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-2000:]


def test_resume_offset_holds_on_a_fresh_loader_with_workers(small_dir):
    """A resumed run's first pass is the first pass of a new DataLoader, which asks its
    sampler for an iterator twice: the offset must survive both calls."""
    kw = dict(batch_size=2, image_size=32, seed=1, num_workers=2)
    full = _collect(build_loader("torch", small_dir, **kw), epoch=2)
    resumed = _collect(build_loader("torch", small_dir, **kw), epoch=2, start=3)
    assert len(resumed) == 2 and all(_same(x, y) for x, y in zip(full[3:], resumed))


def test_passes_without_set_epoch_advance_the_epoch(small_dir):
    loader = build_loader("torch", small_dir, batch_size=2, image_size=32, seed=1, num_workers=0)
    first, second = list(loader), list(loader)
    assert not _same(first[0], second[0])
    assert all(_same(x, y) for x, y in zip(first, _collect(loader, epoch=0)))
    assert all(_same(x, y) for x, y in zip(second, _collect(loader, epoch=1)))


@pytest.mark.parametrize("drop_last", [True, False])
def test_sharding_covers_every_sample_once(small_dir, drop_last):
    kw = dict(batch_size=2, image_size=32, seed=3, num_workers=0, drop_last=drop_last)
    single = {int(i): (c1, c2) for b in _collect(build_loader("torch", small_dir, **kw), 1)
              for i, c1, c2 in zip(b.index, b.coords1, b.coords2)}
    shards = [_collect(build_loader("torch", small_dir, rank=r, world_size=2, **kw), 1) for r in range(2)]
    loaders = [build_loader("torch", small_dir, rank=r, world_size=2, **kw) for r in range(2)]
    per_rank = [torch.cat([b.index for b in s]).tolist() for s in shards]
    assert len(loaders[0]) == len(loaders[1]) == len(shards[0]) == len(shards[1])
    assert len(per_rank[0]) == len(per_rank[1])
    everything = per_rank[0] + per_rank[1]
    if drop_last:  # 10 images, 2 ranks x batch 2: 2 full batches each, 2 images left for next epoch
        assert len(everything) == len(set(everything)) == 8
    else:  # 10 images split 5 + 5: every image exactly once, last batch of each rank short
        assert sorted(everything) == list(range(10))
        assert [len(b) for b in shards[0]] == [2, 2, 1]
    # a sample's views do not depend on the world size (draws keyed by epoch position)
    for s in shards:
        for b in s:
            for i, c1, c2 in zip(b.index, b.coords1, b.coords2):
                if int(i) in single:
                    assert torch.equal(single[int(i)][0], c1) and torch.equal(single[int(i)][1], c2)


def test_sharding_pads_when_uneven(tmp_path):
    for i in range(5):
        Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    shards = [_collect(build_loader("torch", tmp_path, batch_size=4, image_size=16, num_workers=0,
                                    rank=r, world_size=2, drop_last=False)) for r in range(2)]
    idx = [torch.cat([b.index for b in s]).tolist() for s in shards]
    assert len(idx[0]) == len(idx[1]) == 3  # 5 padded to 6: one image twice
    assert set(idx[0] + idx[1]) == set(range(5))


@pytest.fixture()
def damaged_dir(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"ok_{i}.jpg")
    good = (tmp_path / "ok_0.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    return tmp_path


def test_corrupt_images_are_skipped_counted_and_logged_once(damaged_dir, caplog):
    loader = build_loader("torch", damaged_dir, batch_size=4, image_size=32, num_workers=2, drop_last=False)
    bad = {i for i, p in enumerate(loader.images.paths) if not p.name.startswith("ok_")}
    assert len(bad) == 2
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        for epoch in range(3):
            batches = _collect(loader, epoch)
            assert sum(b.skipped for b in batches) >= 2  # each bad file is met at least at its own position
            assert sum(len(b) for b in batches) == 8
            assert not bad & set(torch.cat([b.index for b in batches]).tolist())
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 2
    assert any("truncated.jpg" in m for m in warned) and any("garbage.jpg" in m for m in warned)
    # replacements are deterministic
    again = build_loader("torch", damaged_dir, batch_size=4, image_size=32, num_workers=0, drop_last=False)
    assert all(_same(x, y) for x, y in zip(batches, _collect(again, 2)))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_error_mode_names_the_file(damaged_dir, workers):
    loader = build_loader("torch", damaged_dir, batch_size=8, image_size=32, num_workers=workers,
                          on_corrupt="error", drop_last=False)
    with pytest.raises(Exception, match=r"(truncated|garbage)\.jpg"):
        list(loader)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        build_loader("torch", tmp_path / "no_such_dir", batch_size=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        build_loader("torch", tmp_path / "empty", batch_size=2)
    with pytest.raises(ValueError, match="on_corrupt"):
        build_loader("torch", tmp_path, batch_size=2, on_corrupt="ignore")


def test_too_few_images_for_a_batch(small_dir):
    with pytest.raises(ValueError, match="no batch"):
        build_loader("torch", small_dir, batch_size=6, world_size=2, rank=1, num_workers=0)


def test_image_modes_become_rgb(tmp_path):
    plane = Image.fromarray(coordinate_plane(90, 120))
    plane.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    plane.convert("L").save(tmp_path / "grey.jpg", quality=98)
    rgba = plane.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(plane.size))
    rgba.save(tmp_path / "rgba.png")
    plane.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "palette.png")
    pt = plane.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pt.info["transparency"] = 0
    pt.save(tmp_path / "palette_transparent.png", transparency=0)
    plane.convert("LA").save(tmp_path / "grey_alpha.png")
    Image.fromarray(coordinate_plane(90, 120)[..., 0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    plane.save(tmp_path / "plane.webp", lossless=True)
    names = {p.name for p in tmp_path.iterdir()}
    loader = build_loader("torch", tmp_path, batch_size=len(names), image_size=48, recipe=GEOMETRY,
                          num_workers=0, shuffle=False)
    (batch,) = _collect(loader)
    assert batch.view1.shape == (len(names), 3, 48, 48)
    paths = loader.images.paths
    for k, i in enumerate(batch.index.tolist()):
        name = paths[i].name
        for view, coords in ((batch.view1, batch.coords1), (batch.view2, batch.coords2)):
            v = denormalise(view[k:k + 1], GEOMETRY.mean, GEOMETRY.std)
            if name.startswith("grey"):
                assert (v[:, 0] - v[:, 2]).abs().max() < 1e-5  # grey stays grey in all three channels
            elif name.startswith(("cmyk", "rgba", "plane")):
                # RGB content survives the mode conversion: corners still match the coords
                assert corner_errors(v, coords[k:k + 1]).item() <= corner_tolerance(90, 120, 48, True) + 3 / 255


