"""The run's range as verify sees it, whatever order its chunks were numbered in (no services)."""

from __future__ import annotations

import pytest

from coordinator.verify import run_end
from migrations.errors import CheckFailed


def _chunks(*bounds: tuple[str | None, str]) -> list[dict[str, str | None]]:
    return [{"lo": lo, "hi": hi} for lo, hi in bounds]


def test_a_cut_chunks_second_half_does_not_end_the_run() -> None:
    # planned (,100] (100,200] (200,300]; chunk 1 cut at 150: its rest is chunk 3
    chunks = _chunks((None, "100"), ("100", "150"), ("200", "300"), ("150", "200"))
    assert run_end(chunks) == "300"
    assert run_end(_chunks((None, "100"))) == "100"


def test_chunks_that_do_not_chain_are_refused() -> None:
    with pytest.raises(CheckFailed):
        run_end(_chunks((None, "100"), ("200", "300")))
