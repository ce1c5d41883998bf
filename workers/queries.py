"""Loads the named ledger queries from ``sql/queries.sql`` once."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    text = resources.files("workers").joinpath("sql/queries.sql").read_text()
    parts = _NAME.split(text)
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return {name: body.strip().rstrip(";") for name, body in pairs}


def ledger_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of Ferry's own schema migrations, in order."""
    found = []
    for entry in resources.files("workers").joinpath("sql").iterdir():
        match = re.fullmatch(r"ledger_(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)
