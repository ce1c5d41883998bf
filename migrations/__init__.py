"""The declarative model: what a user writes to describe a backfill."""

from __future__ import annotations

from migrations.errors import BadInput, CheckFailed, FerryError, SpecError
from migrations.loading import load_backfill, normalize_reference
from migrations.spec import Backfill, ValidationRule

__all__ = [
    "BadInput",
    "Backfill",
    "CheckFailed",
    "FerryError",
    "SpecError",
    "ValidationRule",
    "load_backfill",
    "normalize_reference",
]
