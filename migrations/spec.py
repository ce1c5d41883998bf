"""The declarative model users write: ``Backfill`` and ``ValidationRule``.

Both are frozen value objects checked when they are built, so a bad spec fails
in the user's editor or at ``ferry plan`` and never half-way through a run.
``to_dict`` gives the JSON stored with a run: workers and later commands read
that, not the user's (possibly edited) module.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field
from typing import Any, Literal

import pandas as pd

from migrations.errors import SpecError
from migrations.identifiers import QualifiedName, check_expression, check_name

RuleType = Literal["format", "range", "reference", "custom"]
Severity = Literal["warning", "error"]
Action = Literal["skip", "fail", "transform"]
Transform = Callable[[pd.DataFrame], pd.DataFrame]

RULE_TYPES: tuple[str, ...] = ("format", "range", "reference", "custom")
SEVERITIES: tuple[str, ...] = ("warning", "error")
ACTIONS: tuple[str, ...] = ("skip", "fail", "transform")


@dataclass(frozen=True, kw_only=True)
class ValidationRule:
    """One check on a written field, with the plan's fields.

    ``condition`` depends on ``type``: a PostgreSQL regular expression the whole
    value must match (format), ``lo..hi`` with numbers, dates or ``today`` (range),
    ``[schema.]table.column`` (reference) or a SQL boolean expression over the
    row's key and new values (custom). A custom rule may instead give ``check``, a
    Python callable ``fn(df) -> boolean Series`` (True passes) over the transform's
    output, on the pandas path. NULL passes, as in a SQL CHECK constraint.
    """

    field: str
    type: RuleType
    condition: str = ""
    error_message: str = "validation failed"
    severity: Severity = "error"
    action: Action = "skip"
    fix: str | None = None
    check: Callable[[pd.DataFrame], pd.Series] | None = dataclass_field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_name(self.field, "rule field")
        if self.check is not None:
            if self.type != "custom" or not callable(self.check):
                raise SpecError(f"rule on {self.field!r}: check= needs type custom and a callable")
            if self.action == "transform" or self.severity != "error":
                raise SpecError(f"Python rule on {self.field!r} must be an error with skip or fail")
            name = getattr(self.check, "__qualname__", "check")
            object.__setattr__(self, "condition", f"python:{name}")
        if self.type not in RULE_TYPES:
            raise SpecError(f"rule type must be one of {', '.join(RULE_TYPES)}")
        if self.severity not in SEVERITIES:
            raise SpecError(f"rule severity must be one of {', '.join(SEVERITIES)}")
        if self.action not in ACTIONS:
            raise SpecError(f"rule action must be one of {', '.join(ACTIONS)}")
        if not isinstance(self.condition, str) or not self.condition.strip():
            raise SpecError(f"rule on {self.field!r} needs a condition")
        if self.type == "custom" and not self.is_python:
            check_expression(self.condition, f"custom rule on {self.field!r}")
        if self.fix is not None:
            check_expression(self.fix, f"fix of the rule on {self.field!r}")
        if self.type == "range" and ".." not in self.condition:
            raise SpecError(f"range rule on {self.field!r} needs 'lo..hi'")
        if self.type == "reference":
            parts = self.condition.split(".")
            if len(parts) not in (2, 3):
                raise SpecError(f"reference rule on {self.field!r} needs [schema.]table.column")
            for part in parts:
                check_name(part, "reference")
        if self.action == "transform" and self.fix is None:
            raise SpecError(f"rule on {self.field!r} with action 'transform' needs a fix")

    @property
    def is_python(self) -> bool:
        return self.condition.startswith("python:")

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "type": self.type,
            "condition": self.condition,
            "error_message": self.error_message,
            "severity": self.severity,
            "action": self.action,
            "fix": self.fix,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRule:
        return cls(**{k: data[k] for k in data if k in _RULE_FIELDS})


_RULE_FIELDS = frozenset(
    {"field", "type", "condition", "error_message", "severity", "action", "fix"}
)


@dataclass(frozen=True, kw_only=True)
class Backfill:
    """A data transformation over one table, applied in key-range chunks.

    Give either ``sql`` (one SQL expression per written column, evaluated over
    the row) or ``transform`` (a pandas function returning the key and the
    written columns). ``writes`` are the only columns Ferry changes, and their
    old values are kept so the run can be rolled back.
    """

    table: str
    key: str
    writes: Sequence[str]
    reads: Sequence[str] = ()
    sql: Mapping[str, str] | None = None
    transform: Transform | None = None
    rules: Sequence[ValidationRule] = field(default_factory=tuple)
    chunk_size: int = 10_000
    where: str | None = None
    updated_at: str | None = None  # the application's last-modified column, for drift

    def __post_init__(self) -> None:
        QualifiedName.parse(self.table)
        if self.updated_at is not None:
            check_name(self.updated_at, "updated_at column")
        check_name(self.key, "key column")
        writes = tuple(self.writes)
        reads = tuple(self.reads)
        object.__setattr__(self, "writes", writes)
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "rules", tuple(self.rules))
        if not writes:
            raise SpecError("a Backfill must write at least one column")
        for name in (*writes, *reads):
            check_name(name, "column")
        if len(set(writes)) != len(writes):
            raise SpecError("writes lists a column twice")
        if self.key in writes:
            raise SpecError("the key column cannot be written")
        if (self.sql is None) == (self.transform is None):
            raise SpecError("give exactly one of sql={column: expression} or transform=fn")
        if self.sql is not None:
            if set(self.sql) != set(writes):
                raise SpecError("sql must give one expression for each written column")
            if any(not isinstance(e, str) or not e.strip() for e in self.sql.values()):
                raise SpecError("every sql expression must be a non-empty string")
            for column, expression in self.sql.items():
                check_expression(expression, f"sql expression for {column}", side_effects_ok=True)
        if self.where is not None:
            check_expression(self.where, "where filter")
        if self.transform is not None and not callable(self.transform):
            raise SpecError("transform must be a callable DataFrame -> DataFrame")
        if not isinstance(self.chunk_size, int) or not 1 <= self.chunk_size <= 10_000_000:
            raise SpecError("chunk_size must be an integer between 1 and 10,000,000")
        for rule in self.rules:
            if not isinstance(rule, ValidationRule):
                raise SpecError("rules must be ValidationRule objects")
            if rule.field not in writes:
                raise SpecError(f"rule field {rule.field!r} is not a written column")
            if rule.is_python and self.transform is None:
                raise SpecError("Python rules (check=) need a pandas transform")

    @property
    def mode(self) -> Literal["sql", "pandas"]:
        return "sql" if self.sql is not None else "pandas"

    def to_dict(self) -> dict[str, Any]:
        """The part of a run's stored spec that comes from the user's code."""
        return {
            "table": self.table,
            "key": self.key,
            "reads": list(self.reads),
            "writes": list(self.writes),
            "mode": self.mode,
            "sql": dict(self.sql) if self.sql is not None else None,
            "transform": transform_identity(self.transform) if self.transform else None,
            "rules": [r.to_dict() for r in self.rules],
            "chunk_size": self.chunk_size,
            "where": self.where,
            "updated_at": self.updated_at,
        }


def transform_identity(fn: Transform) -> dict[str, str]:
    """Name and fingerprint a transform's code so a worker can tell if it changed.

    Only the source is hashed: values captured by a factory's closure may repr
    differently from one process to the next (sets, hash seeds).
    """
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = name
    return {"name": name, "sha256": hashlib.sha256(source.encode()).hexdigest()}
