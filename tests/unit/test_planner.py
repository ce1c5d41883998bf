"""Planner boundaries, on in-memory keys (no services)."""

from __future__ import annotations

import uuid

import pytest

from workers.planner import MemoryKeys, plan_bounds


def _rows_per_chunk(keys: list, bounds: list[tuple[str | None, str]]) -> list[int]:
    source = MemoryKeys(keys)
    sizes = []
    for lo, hi in bounds:
        lo_v = None if lo is None else source.text[lo]
        hi_v = source.text[hi]
        sizes.append(sum(1 for k in source.keys if (lo_v is None or k > lo_v) and k <= hi_v))
    return sizes


def test_dense_keys_split_evenly() -> None:
    keys = list(range(1, 101))
    bounds = list(plan_bounds(MemoryKeys(keys), 10))
    assert bounds[0] == (None, "10") and bounds[-1] == ("90", "100")
    assert _rows_per_chunk(keys, bounds) == [10] * 10


def test_sparse_keys_give_full_chunks() -> None:
    keys = [k * k * 1000 for k in range(1, 1001)]
    bounds = list(plan_bounds(MemoryKeys(keys), 64))
    sizes = _rows_per_chunk(keys, bounds)
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64
    assert sum(sizes) == 1000


def test_remainder_and_exact_multiple() -> None:
    assert _rows_per_chunk(list(range(25)), list(plan_bounds(MemoryKeys(list(range(25))), 10))) == [
        10,
        10,
        5,
    ]
    assert list(plan_bounds(MemoryKeys(list(range(20))), 10)) == [(None, "9"), ("9", "19")]


def test_empty_and_single_row() -> None:
    assert list(plan_bounds(MemoryKeys([]), 10)) == []
    assert list(plan_bounds(MemoryKeys([42]), 10)) == [(None, "42")]


def test_chunk_size_one() -> None:
    assert list(plan_bounds(MemoryKeys([3, 1, 2]), 1)) == [(None, "1"), ("1", "2"), ("2", "3")]


def test_uuid_and_text_keys_cover_everything_once() -> None:
    for keys in ([uuid.UUID(int=i * 7919) for i in range(500)], [f"k{i:05d}" for i in range(500)]):
        bounds = list(plan_bounds(MemoryKeys(keys), 37))
        sizes = _rows_per_chunk(keys, bounds)
        assert sum(sizes) == 500 and max(sizes) == 37


def test_bad_chunk_size() -> None:
    with pytest.raises(ValueError):
        list(plan_bounds(MemoryKeys([1]), 0))


def test_walk_in_growing_batches_covers_everything_once() -> None:
    """Hundreds of chunks: boundaries come in batches of 16, 32, ... 512; the chunks still
    tile the keys exactly."""
    keys = [k * 3 + (k % 5) for k in range(2_000)]
    bounds = list(plan_bounds(MemoryKeys(keys), 3))
    assert len(bounds) == 667
    sizes = _rows_per_chunk(keys, bounds)
    assert sizes[:-1] == [3] * (len(sizes) - 1) and sum(sizes) == 2_000
    assert all(lo == prev_hi for (lo, _), (_, prev_hi) in zip(bounds[1:], bounds, strict=False))
