"""The output pool: a buffer is handed out again only once nothing else holds its memory."""
import pytest
import torch

from pipelines.output_pool import OutputPool, _storage_use_count


def test_output_pool_hands_a_buffer_out_again_only_once_nothing_holds_it():
    if _storage_use_count is None:
        pytest.skip("this torch cannot count storage uses")
    pool, shape, cpu = OutputPool(size=3), (2, 3, 4, 4), torch.device("cpu")
    a = pool.take(shape, torch.float32, cpu)
    assert a.is_contiguous(memory_format=torch.channels_last)
    b = pool.take(shape, torch.float32, cpu)
    assert b is not a  # a is still held
    b_id = id(b)
    del b
    c = pool.take(shape, torch.float32, cpu)
    assert id(c) == b_id  # freed: recycled
    view = c[0]
    del c
    assert id(pool.take(shape, torch.float32, cpu)) != b_id  # a slice still shares its memory
    del view
    assert id(pool.take(shape, torch.float32, cpu)) == b_id
    assert pool.take((1, 3, 4, 4), torch.float32, cpu).shape == (1, 3, 4, 4)  # another shape: a new one
    assert len(pool.buffers) <= 3
