"""Which columns hold PHI: declared on a Backfill (``phi=``) or project-wide (FERRY_PHI_COLUMNS).

Every row value is treated as sensitive whatever the classification: values are
masked in every sink by default. The classification adds what a default cannot
know: that a *key* is PHI (a medical record number, an SSN used as key), so row
keys and chunk boundaries must be masked too, and it is recorded with the run so
an auditor sees which PHI columns a migration touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from migrations.errors import BadInput, SpecError
from migrations.identifiers import check_name


def parse_setting(raw: str | None) -> tuple[str, ...]:
    """``FERRY_PHI_COLUMNS``: comma-separated ``column``, ``table.column`` or
    ``schema.table.column``; every part a plain identifier (BadInput otherwise)."""
    entries: list[str] = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(".")
        if len(parts) > 3:
            raise BadInput(f"FERRY_PHI_COLUMNS entry {item!r} is not [[schema.]table.]column")
        for part in parts:
            check_name(part, "FERRY_PHI_COLUMNS name")
        entries.append(item)
    return tuple(entries)


def check_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """A Backfill's ``phi=``: plain column names, each once."""
    if isinstance(columns, str):
        raise SpecError("phi must be a list of column names, not one string")
    names = tuple(columns)
    for name in names:
        check_name(name, "phi column")
    if len(set(names)) != len(names):
        raise SpecError("phi lists a column twice")
    return names


def phi_columns(
    declared: Iterable[str],
    project: Iterable[str],
    *,
    schema: str,
    table: str,
    columns: Iterable[str],
) -> list[str]:
    """The run's PHI columns: those declared on the Backfill, plus the project-wide entries
    that name a column of this table (``column``, ``table.column``, ``schema.table.column``)."""
    present = set(columns)
    found = {c for c in declared if c in present}
    for entry in project:
        parts = entry.split(".")
        column = parts[-1]
        if column not in present:
            continue
        if len(parts) == 1 or parts[:-1] in ([table], [schema, table]):
            found.add(column)
    return sorted(found)
