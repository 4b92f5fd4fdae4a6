"""Epoch order, sharding and the epoch cursor (pipelines.epoch): one rule every backend reads."""
import numpy as np
import pytest

from pipelines.epoch import EpochCursor, epoch_order, rank_positions, shard_positions


def test_epoch_order_is_a_seeded_permutation_new_each_epoch():
    a = epoch_order(50, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, epoch_order(50, seed=3, epoch=0))            # the same on every rank
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=0))
    assert epoch_order(5, seed=3, epoch=7, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n,batch,world", [(23, 4, 1), (23, 4, 3), (100, 8, 4), (7, 2, 2)])
def test_shards_are_disjoint_full_batches_with_drop_last(n, batch, world):
    shards = [shard_positions(n, batch, r, world, drop_last=True) for r in range(world)]
    sizes = {len(s) for s in shards}
    assert sizes == {(n // (world * batch)) * batch}                      # the same whole batches on every rank
    taken = np.concatenate(shards)
    assert len(set(taken.tolist())) == len(taken) and taken.max(initial=-1) < n


@pytest.mark.parametrize("n,world", [(23, 3), (24, 4), (5, 8)])
def test_without_drop_last_every_sample_is_read_at_least_once(n, world):
    shards = [shard_positions(n, 4, r, world, drop_last=False) for r in range(world)]
    assert len({len(s) for s in shards}) == 1                             # padded to a multiple of the ranks
    read = {int(p) % n for s in shards for p in s}
    assert read == set(range(n))


def test_no_batch_on_a_rank_is_an_error_naming_the_source():
    with pytest.raises(ValueError, match="6 images in /data give no batch of 4 on each of 2 ranks"):
        rank_positions(6, 4, 0, 2, True, "/data")


def test_cursor_follows_on_after_a_pass_unless_pinned():
    c = EpochCursor(num_batches=10)
    assert c.begin_pass() == (0, 0)                 # the first pass: epoch 0 from its start
    assert c.begin_pass() == (1, 0)                 # a pass without set(): the next epoch
    c.set(5, 3)
    assert c.begin_pass() == (5, 3)                 # pinned: as asked, once
    assert c.begin_pass() == (6, 0)
    c.set(2, 10)                                    # the batch after the last is allowed (epoch done)
    assert c.begin_pass() == (2, 10)
    for bad in ((-1, 0), (0, 11), (0, -1)):
        with pytest.raises(ValueError):
            c.set(*bad)
