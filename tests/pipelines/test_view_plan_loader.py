"""The loader skeleton: a backend that supplies only its pixels gets the epoch plan, resume,
replacement of unreadable samples, the hand-over and Batch assembly; the one meaning of
``num_workers`` and of the colour places."""
import numpy as np
import pytest
import torch

from pipelines import sampler
from pipelines.colour import normalise_uint8
from pipelines.epoch import epoch_order
from pipelines.recipe import BYOL
from pipelines.resample import crop_resize
from pipelines.view_plan_loader import ViewPlanLoader, default_workers, resolve_workers

SIZES = [(40 + 3 * i, 60 - 2 * i) for i in range(10)]   # (height, width) of the in-memory images
BROKEN = 4


class InMemoryLoader(ViewPlanLoader):
    """A fourth backend in a dozen lines: images held as arrays, sample BROKEN unreadable."""
    NAME = "memory"

    def __init__(self, batch_size, image_size=16, recipe=BYOL, **options):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
        super().__init__(lambda: (len(self.images), "memory"), batch_size, image_size, recipe, **options)

    def sample_name(self, item: int) -> str:
        return f"image {item}"

    def _read(self, index):
        if index == BROKEN:
            raise OSError("damaged")
        return self.images[index]

    def batches(self, epoch, start):
        for b in range(start, self.num_batches):
            picked = [self.first_readable(epoch, int(p), self._read) for p in self.batch_positions(b)]
            index = np.array([i for _, i, _ in picked])
            draws = sampler.draw(self.recipe, self.image_size, self.seed, epoch, index,
                                 np.array([SIZES[i][0] for i in index]), np.array([SIZES[i][1] for i in index]))
            views = []
            for v, size in enumerate(self.sizes):
                out = np.empty((len(index), 3, size, size), np.uint8)
                for k, (pixels, _, _) in enumerate(picked):
                    t, l, h, w, f = (draws[k, v, sampler.P[n]] for n in ("top", "left", "height", "width", "flip"))
                    crop_resize(pixels, t, l, h, w, size, f > 0.5, out[k])
                views.append(torch.from_numpy(out))
            yield self.finish(views, draws, index, sum(r for _, _, r in picked))


def test_a_backend_that_supplies_only_pixels_gets_the_whole_contract(caplog):
    import logging
    loader = InMemoryLoader(batch_size=3, seed=5, drop_last=False, colour="device")
    assert len(loader) == 4 and loader.colour == "device"
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        batches = list(loader)
    index = torch.cat([b.index for b in batches]).tolist()
    order = epoch_order(len(SIZES), 5, 0)
    p = int(np.flatnonzero(order == BROKEN)[0])
    want = [order[(p + 1) % len(SIZES)] if i == BROKEN else i for i in order]   # the last batch short
    assert index == want and sum(b.skipped for b in batches) == 1 and len(batches[-1]) == 1
    assert [r.getMessage() for r in caplog.records].count(
        "skipping unreadable image image 4 (damaged); replaced by the next readable sample") == 1
    for b in batches:   # the boxes and the draws handed over are the sampler's for these samples
        draws = sampler.draw(BYOL, 16, 5, 0, b.index.numpy(), np.array([SIZES[i][0] for i in b.index]),
                             np.array([SIZES[i][1] for i in b.index]))
        for v, c in enumerate(b.coords):
            torch.testing.assert_close(c, sampler.coords_of(draws[:, v]))
        assert all(v.is_contiguous(memory_format=torch.channels_last) for v in b.views)
    np.testing.assert_array_equal(loader.last_params, draws)
    # the next pass is the next epoch; set_epoch(e, k) gives batches k.. of epoch e
    again = list(loader)
    assert torch.cat([b.index for b in again]).tolist() != index
    loader.set_epoch(0, 2)
    rest = list(loader)
    assert len(rest) == 2 and all(torch.equal(a.views[0], b.views[0]) for a, b in zip(rest, batches[2:]))


def test_views_coloured_elsewhere_are_normalised_and_finished_ones_kept():
    loader = InMemoryLoader(batch_size=2, colour="auto")
    crops = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    draws = np.zeros((2, 2, len(sampler.PARAM_NAMES)))
    draws[:, :, sampler.P["height"]] = draws[:, :, sampler.P["width"]] = 16
    draws[:, :, sampler.P["image_height"]] = draws[:, :, sampler.P["image_width"]] = 16
    loader.colour = "workers"   # as a backend whose workers did the colour steps
    batch, _ = loader.finish([crops, crops.float()], draws, [0, 1], 0)
    torch.testing.assert_close(batch.views[0], normalise_uint8(crops, BYOL.mean, BYOL.std))
    assert torch.equal(batch.views[1], crops.float())
    assert batch.coords[0].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2


def test_one_meaning_of_workers_and_of_the_colour_places(monkeypatch):
    assert resolve_workers(None) == default_workers() >= 1 and resolve_workers(0) == 0
    with pytest.raises(ValueError, match="num_workers must be non-negative"):
        resolve_workers(-1)
    threaded = type("Threaded", (InMemoryLoader,), {"MIN_WORKERS": 1})   # as DALI and FFCV: no in-thread mode
    assert threaded(batch_size=2, num_workers=0).num_workers == 1 and InMemoryLoader(2, num_workers=0).num_workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert default_workers() == 1   # shared among the processes of a node, never below one
    with pytest.raises(ValueError, match=r"colour must be one of \('auto', 'device'\) for the memory backend"):
        InMemoryLoader(batch_size=2, colour="pil")
    with pytest.raises(ValueError, match="on_corrupt"):   # options are checked before the data is opened
        InMemoryLoader(batch_size=2, on_corrupt="ignore")
