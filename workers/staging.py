"""The pandas path's first half: read a chunk, transform it, stage the result.

The chunk is read with COPY into a DataFrame, handed to the user's transform,
checked (key and written columns present, no foreign or repeated keys),
judged by the Python rules, and COPYed into the run's temp table, where the
chunk statement takes it from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg

from migrations.errors import FerryError, PermanentChunkError
from migrations.identifiers import check_expression
from migrations.loading import load_backfill
from migrations.masking import mask_words_of
from migrations.named import Step, steps_of
from migrations.named import build as build_named
from migrations.named import identity as named_identity
from migrations.spec import Transform, sql_texts, transform_identity
from workers.copyio import read_copy, write_copy
from workers.copyout import copy_out
from workers.failures import classify
from workers.model import RunSpec
from workers.statements import PYRULE_NAME, KeyRange, Statements
from workers.telemetry import step

Check = Callable[[pd.DataFrame], pd.Series]


class ValueConversionError(PermanentChunkError):
    """A chunk's values could not be turned into a frame or back into COPY text.

    A bug or a value Ferry does not handle, not a bad row the user can fix by a rule; never
    retried, and its message names the error class only: the value may be PHI. The
    pre-flight reports it as bad input (exit 2).
    """


_CONVERSION = (ValueError, TypeError, ArithmeticError, UnicodeError)


@dataclass(frozen=True)
class RunContext:
    """What a worker needs for every chunk of a run, built once per process."""

    run_id: int
    spec: RunSpec
    statements: Statements
    transform: Transform | None
    checks: tuple[tuple[int, Check], ...] = ()

    @classmethod
    def build(cls, run_id: int, spec: RunSpec) -> RunContext:
        _recheck(spec)
        statements = Statements(spec, run_id)
        if spec.mode != "pandas":
            return cls(run_id, spec, statements, None)
        named = steps_of(spec.transform)
        if named is not None and not any(rule.is_python for rule in spec.rules):
            # Built from the ledger alone: no user module to import on this worker.
            return cls(run_id, spec, statements, checked_named(spec, named))
        backfill = load_backfill(spec.reference)
        transform = (
            checked_named(spec, named)
            if named is not None
            else checked_transform(spec, backfill.transform)
        )
        checks = tuple(
            (i, rule.check) for i, rule in enumerate(backfill.rules) if rule.check is not None
        )
        if [i for i, _ in checks] != [i for i, r in enumerate(spec.rules) if r.is_python]:
            raise PermanentChunkError("the backfill's Python rules changed since the run started")
        return cls(run_id, spec, statements, transform, checks)


def _recheck(spec: RunSpec) -> None:
    """The stored spec's SQL text is parsed again as it is loaded, not trusted: each piece must
    still be one expression (no stacked statement, no comment), as at launch."""
    try:
        for what, text in sql_texts(spec.where, spec.sql, spec.rules):
            check_expression(text, what, side_effects_ok=True)
    except FerryError as exc:
        raise PermanentChunkError(f"the run's stored spec is refused: {exc}") from None


def checked_named(spec: RunSpec, steps: tuple[Step, ...]) -> Transform:
    """A named transform built from the run's stored steps, refused if the library changed."""
    expected = (spec.transform or {}).get("sha256")
    if expected and named_identity(steps)["sha256"] != expected:
        raise PermanentChunkError(
            "the transforms library changed since the run started; start a new run"
        )
    try:
        return build_named(steps)
    except FerryError as exc:
        raise PermanentChunkError(str(exc)) from None


def checked_transform(spec: RunSpec, transform: object) -> Transform:
    """The run's transform, refused if its code changed since launch."""
    if transform is None or not callable(transform):
        raise PermanentChunkError("the backfill no longer has a transform")
    expected = (spec.transform or {}).get("sha256")
    if expected and transform_identity(transform)["sha256"] != expected:
        raise PermanentChunkError(
            "the transform's code changed since the run started; start a new run"
        )
    return transform


def frame_values(frame: pd.DataFrame) -> list[object]:
    """Every distinct value of a chunk's frame: what a message about it must not show."""
    return [v for col in frame.columns for v in pd.unique(frame[col].dropna())]


def run_transform(
    fn: Transform, frame: pd.DataFrame, key: str, writes: tuple[str, ...]
) -> pd.DataFrame:
    """Call the user's transform and check its output has the shape the engine needs."""
    read_keys = frame[key].array.copy()  # the transform may change the frame in place
    try:
        out = fn(frame)
    except Exception as exc:
        # ``from None``: the original message may quote a row value; every word of the
        # chunk's values is masked in what is kept of it.
        raise PermanentChunkError(
            mask_words_of(f"transform raised {classify(exc)}", frame_values(frame))
        ) from None
    if not isinstance(out, pd.DataFrame):
        raise PermanentChunkError("transform must return a DataFrame")
    missing = [c for c in (key, *writes) if c not in out.columns]
    if missing:
        raise PermanentChunkError(f"transform output lacks columns: {', '.join(missing)}")
    out = out[[key, *writes]]
    if _same_keys(out[key], read_keys):
        return out  # the common case: every row back, in order, its key untouched
    # Rows dropped, reordered or keys retyped: compare them as text, one by one.
    keys = key_text(out[key])
    wanted = key_text(pd.Series(read_keys))
    if not keys.is_unique:
        raise PermanentChunkError("transform output repeats a key")
    if not keys.isin(wanted).all():
        raise PermanentChunkError("transform output has keys that are not in the chunk")
    return out.assign(**{key: keys})


def key_text(keys: pd.Series) -> pd.Series:
    """Keys as text, value by value: ``astype(str)`` keeps what pandas counts as missing
    missing, and it counts numeric's NaN (``Decimal('NaN')``, a key like any other) as
    missing, which then staged as NULL matched no row: the row was silently not written."""
    return pd.Series([str(k) for k in keys.tolist()], index=keys.index, dtype=object)


def _same_keys(keys: pd.Series, read: Any) -> bool:
    """True when ``keys`` are the chunk's keys, same type, same order (no text copies made).

    ``equals``, not ``==`` then ``all``: an element compared with a missing key is NA,
    which ``all`` skips, so a key set to NA would pass for the key it replaced.
    """
    if keys.dtype != read.dtype or len(keys) != len(read):
        return False
    return bool(pd.Series(keys.array).equals(pd.Series(read)))


def judge(out: pd.DataFrame, checks: tuple[tuple[int, Check], ...]) -> pd.Series:
    """Index of the first Python rule each row fails (NA when it passes them all)."""
    first = pd.Series(pd.NA, index=out.index, dtype="Int64")
    for index, check in reversed(checks):
        try:
            ok = pd.Series(check(out), index=out.index).astype("boolean").fillna(True)
        except Exception as exc:
            raise PermanentChunkError(
                mask_words_of(f"rule check raised {classify(exc)}", frame_values(out))
            ) from None
        first = first.mask(~ok.to_numpy(dtype=bool), index)
    return first


def stage_input(
    conn: psycopg.Connection[Any], ctx: RunContext, key_range: KeyRange, *, lock: bool = False
) -> int:
    """Read the chunk via COPY (locking its rows with ``lock``), transform and judge it, COPY
    the result into the temp table; the number of rows read."""
    spec = ctx.spec
    st = ctx.statements
    olds = st.raw_columns  # the old values (and version) read, staged as they came
    with step("ferry.read"):
        data = copy_out(conn.cursor(), st.read_copy(key_range, lock=lock))
        try:
            frame = read_copy(data, [*st.read_columns(), *olds], spec.column_types, olds)
        except _CONVERSION as exc:
            raise ValueConversionError(
                f"could not read the chunk's values ({type(exc).__name__})"
            ) from None
        if olds:  # the transform sees what it reads, no more
            read, frame = frame[olds], frame.drop(columns=olds)
            keys_read = frame[spec.key].array.copy()
    assert ctx.transform is not None
    with step("ferry.transform"):
        out = run_transform(ctx.transform, frame, spec.key, spec.writes)
    if olds:
        out = _with_olds(out, spec.key, keys_read, read)
    columns = [spec.key, *spec.writes, *olds]
    with step("ferry.validate"):
        if ctx.checks:  # without Python rules the staged rule column is left NULL
            out = out.assign(**{PYRULE_NAME: judge(out, ctx.checks)})
            columns.append(PYRULE_NAME)
    with step("ferry.stage"):
        # Every chunk, not once a connection (~0.7 ms): behind a transaction-pooling
        # PgBouncer the next transaction may be on a server session without the table.
        conn.execute(st.create_input())
        types = {**spec.column_types, PYRULE_NAME: "integer"}
        try:
            staged = write_copy(out, columns, types, olds)
        except _CONVERSION as exc:
            raise ValueConversionError(
                f"could not write the transform's values ({type(exc).__name__})"
            ) from None
        with conn.cursor().copy(st.write_copy(judged=bool(ctx.checks))) as copy:
            copy.write(staged)
    return len(frame)


def _with_olds(out: pd.DataFrame, key: str, keys_read: Any, read: pd.DataFrame) -> pd.DataFrame:
    """The transform's rows with the old values read for their keys beside them.

    Row by row in the common case (every row back, in order); otherwise matched by the key
    as text, as ``run_transform`` left the keys of a frame it had to compare that way.
    """
    if _same_keys(out[key], keys_read):
        rows = read
    else:
        position = pd.Series(range(len(keys_read)), index=key_text(pd.Series(keys_read)))
        rows = read.iloc[position.loc[key_text(out[key])].to_numpy()]
    return out.assign(**{c: rows[c].to_numpy() for c in read.columns})
