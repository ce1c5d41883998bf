"""Chunk sizing to a target duration, as pt-online-schema-change and GitLab size batches.

A run is planned in chunks of the spec's ``chunk_size`` rows, which is also
the ceiling: a worker that claims a chunk much larger than the run's current
target cuts it, takes the first ``target`` rows and hands the rest back as a
new chunk. The target follows measured rows per second (smoothed, so one slow
chunk does not halve the next) toward ``chunk_time`` seconds per chunk
transaction. A chunk cancelled by statement_timeout is cut in half, since a
retry of the same size would time out again.

Chunks only ever shrink: growing one would mean merging ledger rows, whose
pre-images, quarantine and rollback are per chunk. ``chunk_size`` is therefore
the largest transaction a run will take, and the knob to raise when chunks
are fast.
"""

from __future__ import annotations

from dataclasses import dataclass

# A chunk is cut only when it is this much larger than the target: cutting one that is
# nearly right costs an extra task and ledger row for nothing.
SPLIT_FACTOR = 1.5
# Weight of the newest measurement in the smoothed target.
SMOOTHING = 0.5
# Below this many rows a chunk is never cut: per-chunk overheads would dominate.
MIN_ROWS = 10


@dataclass(frozen=True, slots=True)
class Sizing:
    """A run's sizing inputs: the ceiling (the spec's chunk_size) and the target duration."""

    ceiling: int
    chunk_time: float

    @property
    def floor(self) -> int:
        return min(MIN_ROWS, self.ceiling)

    def next_target(self, current: int | None, rows: int, seconds: float) -> int | None:
        """The run's new target after a chunk of ``rows`` rows took ``seconds``.

        Unchanged when the measurement says nothing (an empty chunk, or no time at all).
        """
        if rows <= 0 or seconds <= 0:
            return current
        measured = rows / seconds * self.chunk_time
        if current is None:  # the first measurement is the best guess there is
            return self.clamp(round(measured))
        smoothed = (1 - SMOOTHING) * current + SMOOTHING * measured
        return self.clamp(round(smoothed))

    def clamp(self, rows: float) -> int:
        return int(max(self.floor, min(self.ceiling, rows)))

    def cut(self, planned: int | None, target: int | None) -> int | None:
        """How many rows to keep of a chunk planned at ``planned`` rows, or None to keep it."""
        size = self.ceiling if planned is None else planned
        if target is None or size < 2 * self.floor:
            return None
        keep = self.clamp(target)
        return keep if size > SPLIT_FACTOR * keep else None

    def halve(self, planned: int | None) -> int | None:
        """The rows to keep of a chunk that timed out, or None when it is already minimal."""
        size = self.ceiling if planned is None else planned
        if size < 2 * self.floor:
            return None
        return max(self.floor, size // 2)
