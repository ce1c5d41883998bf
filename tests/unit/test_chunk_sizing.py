"""Chunk sizing to a target duration: the pure arithmetic the workers apply."""

from __future__ import annotations

from workers.sizing import MIN_ROWS, Sizing


def test_target_moves_toward_the_rows_that_fill_the_chunk_time() -> None:
    sizing = Sizing(ceiling=10_000, chunk_time=0.5)
    # 10,000 rows in 2 s is 5,000 rows/s: half a second holds 2,500 rows.
    assert sizing.next_target(None, 10_000, 2.0) == 2_500  # the first measurement is taken
    # Later ones are smoothed: one slow chunk moves the target halfway, not all the way.
    assert sizing.next_target(2_500, 1_000, 1.0) == round(0.5 * 2_500 + 0.5 * 500)
    target: int | None = 1_500
    for _ in range(12):
        target = sizing.next_target(target, 2_500, 0.5)
    assert target is not None and abs(target - 2_500) < 5


def test_target_stays_within_bounds() -> None:
    sizing = Sizing(ceiling=1_000, chunk_time=0.5)
    assert sizing.next_target(1_000, 1_000, 0.001) == 1_000  # fast: never above the ceiling
    target: int | None = 1_000
    for _ in range(30):
        target = sizing.next_target(target, 10, 100.0)  # hopelessly slow rows
    assert target == MIN_ROWS


def test_no_measurement_leaves_the_target_alone() -> None:
    sizing = Sizing(ceiling=1_000, chunk_time=0.5)
    assert sizing.next_target(400, 0, 1.0) == 400
    assert sizing.next_target(None, 100, 0.0) is None


def test_a_chunk_is_cut_only_when_clearly_larger_than_the_target() -> None:
    sizing = Sizing(ceiling=10_000, chunk_time=0.5)
    assert sizing.cut(None, None) is None  # nothing measured yet
    assert sizing.cut(None, 2_000) == 2_000  # planned at the ceiling
    assert sizing.cut(2_900, 2_000) is None  # within 1.5x: not worth a ledger row
    assert sizing.cut(3_100, 2_000) == 2_000
    assert sizing.cut(15, 1) is None  # too small to cut at all
    assert sizing.cut(500, 1) == MIN_ROWS


def test_a_timed_out_chunk_is_halved_down_to_the_floor() -> None:
    sizing = Sizing(ceiling=1_000, chunk_time=0.5)
    assert sizing.halve(None) == 500
    assert sizing.halve(21) == MIN_ROWS
    assert sizing.halve(MIN_ROWS * 2 - 1) is None
    assert Sizing(ceiling=5, chunk_time=0.5).halve(None) is None
