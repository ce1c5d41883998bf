"""The declarative model users write: ``Backfill`` and ``ValidationRule``.

Both are frozen value objects checked when they are built, so a bad spec fails
in the user's editor or at ``ferry plan`` and never half-way through a run.
``to_dict`` gives the JSON stored with a run: workers and later commands read
that, not the user's (possibly edited) module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any, Literal

from migrations.classification import check_columns as check_phi
from migrations.errors import BadInput, SpecError
from migrations.identifiers import QualifiedName, check_expression, check_name
from migrations.named import Step, parse_steps
from migrations.named import build as build_named
from migrations.named import identity as named_identity

if TYPE_CHECKING:
    import pandas as pd

RuleType = Literal["format", "range", "reference", "custom"]
Severity = Literal["warning", "error"]
Action = Literal["skip", "fail", "transform"]
Transform = Callable[["pd.DataFrame"], "pd.DataFrame"]  # pandas is imported by who runs one

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
    # A function, or a transforms library name (with params), or [(name, params), ...].
    transform: Transform | str | Sequence[tuple[str, Mapping[str, Any]]] | None = None
    params: Mapping[str, Any] | None = None
    rules: Sequence[ValidationRule] = field(default_factory=tuple)
    chunk_size: int = 10_000
    where: str | None = None
    updated_at: str | None = None  # the application's last-modified column, for drift
    phi: Sequence[str] = ()  # columns holding PHI (see migrations.classification)
    # Volatile functions the expressions may call beyond now(), clock_timestamp(),
    # gen_random_uuid() and random(): ``["nextval", "app.enrich"]`` (workers.catalog)
    allow_functions: Sequence[str] = ()
    named: tuple[Step, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        QualifiedName.parse(self.table)
        if self.updated_at is not None:
            check_name(self.updated_at, "updated_at column")
        object.__setattr__(self, "phi", check_phi(self.phi))
        if isinstance(self.allow_functions, str):
            raise SpecError("allow_functions must be a list of function names")
        for function in self.allow_functions:
            try:
                QualifiedName.parse(function)  # a name, or schema.name
            except BadInput:
                raise SpecError(
                    f"allow_functions entry {str(function)[:63]!r} is not a function name "
                    "(name or schema.name)"
                ) from None
        object.__setattr__(self, "allow_functions", tuple(self.allow_functions))
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
        named = parse_steps(self.transform, self.params)
        if named is not None:
            object.__setattr__(self, "named", named)
            object.__setattr__(self, "transform", build_named(named))
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
            "transform": self._transform_identity(),
            "rules": [r.to_dict() for r in self.rules],
            "chunk_size": self.chunk_size,
            "where": self.where,
            "updated_at": self.updated_at,
            "phi": list(self.phi),
            "allow_functions": list(self.allow_functions),
        }


    def _transform_identity(self) -> dict[str, Any] | None:
        if self.named is not None:
            return named_identity(self.named)
        return transform_identity(self.callable) if self.transform else None

    @property
    def callable(self) -> Transform:
        """The pandas transform (a named one built from the library)."""
        assert callable(self.transform)
        return self.transform


def transform_identity(fn: Transform) -> dict[str, str]:
    """Name and fingerprint a transform so a worker can tell if it changed since launch.

    The fingerprint covers the function's source, the functions its closure captured (a
    factory's inner steps) and the captured values that are plain data (strings, numbers,
    compiled patterns, lists and dicts of them: a factory's parameters, so ``dayfirst=True``
    edited to False is a different transform). Other captured values are left out: their repr
    may differ from one process to the next (sets, hash seeds), which would refuse every run.
    """
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
    digest = hashlib.sha256()
    for part in _code_parts(fn, set()):
        digest.update(part.encode())
    return {"name": name, "sha256": digest.hexdigest()}


def _code_parts(fn: Callable[..., Any], seen: set[int]) -> list[str]:
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    try:
        parts = [inspect.getsource(fn)]
    except (OSError, TypeError):
        parts = [f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"]
    captured = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
    captured += list(getattr(fn, "__defaults__", None) or ())
    captured += list((getattr(fn, "__kwdefaults__", None) or {}).values())
    for value in captured:
        if inspect.isfunction(value):
            parts += _code_parts(value, seen)
            continue
        try:
            parts.append(json.dumps(_stable(value), sort_keys=True))
        except (TypeError, ValueError):
            continue
    return parts


def _stable(value: Any) -> Any:
    """A JSON form of a captured value that is the same in every process, or TypeError."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, re.Pattern):
        return ["re", value.pattern, value.flags]
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def sql_texts(
    where: str | None, sql: Mapping[str, str] | None, rules: Sequence[ValidationRule]
) -> list[tuple[str, str]]:
    """Every piece of SQL text a run executes on the user's rows, named for error messages:
    what plan/launch check against the catalog and a worker parses again as it loads a run."""
    texts = [("--where filter", where)] if where else []
    texts += [(f"sql expression for {c}", e) for c, e in (sql or {}).items()]
    for rule in rules:
        if rule.type == "custom" and not rule.is_python:
            texts.append((f"custom rule on {rule.field!r}", rule.condition))
        if rule.fix:
            texts.append((f"fix of the rule on {rule.field!r}", rule.fix))
    return texts
