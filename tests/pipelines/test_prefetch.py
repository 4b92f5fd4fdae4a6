"""Reading ahead in a thread: order, errors, per-thread torch settings and clean stops."""
import threading

import pytest
import torch

from pipelines.prefetch import finish_in_thread, hand_over


def _source(n, log, fail_at=None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"item {i} is bad")
            log.append((i, threading.current_thread().name, torch.get_num_threads()))
            yield i
    finally:
        log.append(("closed", threading.current_thread().name))


def test_items_come_in_order_from_the_thread_with_its_own_thread_count():
    before = torch.get_num_threads()
    log = []
    assert list(finish_in_thread(_source(6, log), 2, "colour-test", threads=1)) == list(range(6))
    assert {(name, threads) for _, name, threads in log[:-1]} == {("colour-test", 1)}
    assert torch.get_num_threads() == before


def test_an_error_reaches_the_consumer_at_its_item():
    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for i in finish_in_thread(_source(6, [], fail_at=3), 2, "colour-test"):
            got.append(i)
    assert got == [0, 1, 2]


def test_stopping_early_stops_the_thread_and_closes_the_source():
    log = []
    it = finish_in_thread(_source(100, log), 2, "colour-test")
    assert [next(it), next(it)] == [0, 1]
    it.close()
    assert log[-1][0] == "closed"
    made = len(log) - 1
    assert made < 100  # read ahead a few items, not the whole source
    assert not any(t.name == "colour-test" for t in threading.enumerate())


@pytest.mark.parametrize("thread", [None, "colour-test"])
def test_hand_over_sets_the_draws_of_the_batch_handed_over(thread):
    class Owner:
        last_params = None

    owner, log = Owner(), []
    pairs = ((i, f"draws {i}") for i in _source(50, log))
    it = hand_over(owner, pairs, thread)
    for i in range(5):
        assert next(it) == i and owner.last_params == f"draws {i}"  # not a batch made ahead
    it.close()
    assert log[-1] == ("closed", "MainThread")  # closed by the consumer's side, once the thread is done
    assert {name for _, name, *_ in log[:-1]} == {thread or "MainThread"}
