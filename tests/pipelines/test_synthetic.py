"""The synthetic backend: pooled views, boxes from the sampler, the epoch plan."""
import torch

from pipelines import build_loader


def _collect(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


def test_pooled_views_and_sampled_boxes_follow_the_epoch_plan():
    s = build_loader("synthetic", None, batch_size=3, image_size=32, batches_per_epoch=4, seed=1)
    a = _collect(s, 0)
    assert len(s) == 4 and len(a) == 4 and len(_collect(s, 0, 2)) == 2
    for b in a:
        assert b.view1.shape == (3, 3, 32, 32) and b.view1.is_contiguous(memory_format=torch.channels_last)
        assert b.coords1.shape == (3, 4) and 0 <= b.coords1.min() and b.coords1.max() <= 1
    assert torch.equal(a[0].coords1, _collect(build_loader("synthetic", None, batch_size=3, image_size=32,
                                                           batches_per_epoch=4, seed=1), 0)[0].coords1)
    # the boxes are the sampler's for the sample indices on a 500 x 375 image
    from pipelines import sampler
    from pipelines.recipe import BYOL
    from pipelines.synthetic import VIRTUAL_IMAGE
    idx = a[1].index.numpy()
    drawn = sampler.draw(BYOL, 32, 1, 0, idx, [VIRTUAL_IMAGE[0]] * 3, [VIRTUAL_IMAGE[1]] * 3)
    torch.testing.assert_close(a[1].coords[1], sampler.coords_of(drawn[:, 1]))
