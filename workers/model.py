"""Immutable records of a run as the ledger stores it.

``RunSpec`` is everything a worker needs to apply a chunk, resolved once by
the coordinator (catalog types included) and stored as JSON with the run:
workers never consult the user's module for anything but the transform code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from migrations.identifiers import QualifiedName
from migrations.spec import ValidationRule

RUN_FINAL = frozenset(
    {"completed", "completed_with_errors", "failed", "cancelled", "rolled_back", "rollback_failed"}
)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    reference: str
    schema: str
    table: str
    key: str
    key_type: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    column_types: Mapping[str, str]
    mode: Literal["sql", "pandas"]
    sql: Mapping[str, str] | None
    transform: Mapping[str, str] | None
    rules: tuple[ValidationRule, ...]
    chunk_size: int
    where: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def qualified(self) -> QualifiedName:
        return QualifiedName(self.schema, self.table)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "schema": self.schema,
            "table": self.table,
            "key": self.key,
            "key_type": self.key_type,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "column_types": dict(self.column_types),
            "mode": self.mode,
            "sql": dict(self.sql) if self.sql is not None else None,
            "transform": dict(self.transform) if self.transform is not None else None,
            "rules": [r.to_dict() for r in self.rules],
            "chunk_size": self.chunk_size,
            "where": self.where,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(
            reference=data["reference"],
            schema=data["schema"],
            table=data["table"],
            key=data["key"],
            key_type=data["key_type"],
            reads=tuple(data["reads"]),
            writes=tuple(data["writes"]),
            column_types=dict(data["column_types"]),
            mode=data["mode"],
            sql=data["sql"],
            transform=data["transform"],
            rules=tuple(ValidationRule.from_dict(r) for r in data["rules"]),
            chunk_size=int(data["chunk_size"]),
            where=data["where"],
            extra=data.get("extra", {}),
        )


@dataclass(frozen=True, kw_only=True)
class Run:
    id: int
    backfill: str
    status: str
    spec: RunSpec
    params: Mapping[str, Any]
    total_chunks: int | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    # chunks still to be recorded by the planner's walk (ledger version 9, workers.walk)
    walking: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Run:
        return cls(
            id=row["id"],
            backfill=row["backfill"],
            status=row["status"],
            spec=RunSpec.from_dict(row["spec"]),
            params=row["params"] or {},
            total_chunks=row["total_chunks"],
            created_by=row["created_by"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            walking=bool(row.get("walking")),
        )

    @property
    def is_final(self) -> bool:
        return self.status in RUN_FINAL


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkResult:
    """What applying one chunk did; ``noop`` when it was already done or not runnable."""

    run_id: int
    chunk_no: int
    outcome: Literal["done", "noop", "rolled_back"]
    rows_read: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_warned: int = 0
    duration_ms: float = 0.0
    attempt: int = 0
    released: tuple[int, ...] = ()  # chunks of the run this one's settling let go to the broker
