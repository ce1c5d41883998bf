"""Planner boundaries, on in-memory keys (no services)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.planner import MemoryKeys, plan_bounds, walk_batches


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


def assert_partition(
    keys: list[Any], bounds: list[tuple[str | None, str]], chunk_size: int
) -> None:
    """Every key in exactly one ``(lo, hi]``, the ranges in order and adjacent, every chunk
    full but the last, which holds the remainder (never dropped, never empty)."""
    source = MemoryKeys(keys)
    if not keys:
        assert bounds == []
        return
    covering = {k: 0 for k in source.keys}
    for lo, hi in bounds:
        lo_v = None if lo is None else source.text[lo]
        for k in source.keys:
            if (lo_v is None or k > lo_v) and k <= source.text[hi]:
                covering[k] += 1
    assert [k for k, n in covering.items() if n != 1] == []
    assert bounds[0][0] is None and bounds[-1][1] == str(source.keys[-1])
    assert all(lo == prev_hi for (lo, _), (_, prev_hi) in zip(bounds[1:], bounds, strict=False))
    sizes = _rows_per_chunk(keys, bounds)
    remainder = len(keys) % chunk_size or chunk_size
    assert sizes == [chunk_size] * (len(sizes) - 1) + [remainder]


@pytest.mark.parametrize("rows", [1, 2, 9, 10, 11, 19, 21, 99, 101, 1_001])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 10, 17, 100])
def test_every_key_in_exactly_one_chunk_whatever_the_remainder(rows: int, chunk_size: int) -> None:
    """Row counts around and between multiples of the chunk size: the last partial chunk
    is there and holds exactly the remainder."""
    keys = [k * 5 - 2_500 for k in range(rows)]  # negative, sparse
    assert_partition(keys, list(plan_bounds(MemoryKeys(keys), chunk_size)), chunk_size)


def test_a_walk_that_goes_on_from_a_boundary_covers_the_rest_once() -> None:
    """As ``workers.walk`` does: the first batch, then batches from its last boundary up to
    the key that was last when the walk began."""
    keys = [k * 3 for k in range(1_000)]
    source = MemoryKeys(keys)
    first, done = next(walk_batches(source, 7, first=4))
    assert not done and len(first) == 4
    rest: list[tuple[str | None, str]] = []
    after, last = first[-1][1], source.last()
    while True:
        batch, done = next(walk_batches(source, 7, after=after, last=last, first=8))
        rest += batch
        if done:
            break
        after = batch[-1][1]
    assert_partition(keys, first + rest, 7)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.sets(st.integers(-(2**63), 2**63 - 1), max_size=300),
        st.sets(st.uuids(), max_size=200),
        st.sets(st.text(max_size=6), max_size=200),
    ),
    st.integers(1, 40),
)
def test_planned_chunks_partition_any_key_set(keys: set[Any], chunk_size: int) -> None:
    assert_partition(list(keys), list(plan_bounds(MemoryKeys(list(keys)), chunk_size)), chunk_size)
