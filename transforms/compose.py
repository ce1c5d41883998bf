"""Putting transforms together, and handing the engine exactly what it wants.

Why: a backfill has one ``transform=``; real rules are several steps (clean,
parse, convert, stamp). ``pipeline`` chains them; ``select_output`` trims the
result to the key and the written columns, in that order, which is the shape
the engine stages and checks (no stray helper columns reach the temp table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd

from transforms._common import check_name, check_names, require_columns

Transform = Callable[[pd.DataFrame], pd.DataFrame]


def pipeline(*fns: Transform) -> Transform:
    """One transform applying ``fns`` left to right, each to the previous result.

    A step that returns something other than a DataFrame fails with
    ``ValueError`` naming the step's position (never its data).

    >>> from transforms.strings import normalize_strings
    >>> from transforms.enrich import stamp
    >>> fn = pipeline(normalize_strings("name", case="upper"), stamp(v="1"))
    >>> fn(pd.DataFrame({"name": [" ann "]})).to_dict("records")
    [{'name': 'ANN', 'v': '1'}]
    """
    if not fns:
        raise ValueError("pipeline needs at least one transform")
    for position, fn in enumerate(fns, start=1):
        if not callable(fn):
            raise ValueError(f"pipeline step {position} is not callable")
    steps = tuple(fns)

    def pipeline_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [])
        out = df
        for position, fn in enumerate(steps, start=1):
            out = fn(out)
            if not isinstance(out, pd.DataFrame):
                raise ValueError(f"pipeline step {position} did not return a DataFrame")
        return out

    return pipeline_fn


def select_output(key: str, writes: str | Iterable[str]) -> Transform:
    """Only ``key`` then ``writes``, in that order: the frame the engine stages.

    Use it last in a ``pipeline`` with the backfill's own ``key`` and
    ``writes``. A missing column is a spec bug and raises ``ValueError``.

    >>> df = pd.DataFrame({"tmp": [0], "dob": ["1990-02-03"], "id": [7]})
    >>> select_output("id", ["dob"])(df).columns.tolist()
    ['id', 'dob']
    """
    check_name(key, "key")
    columns = check_names(writes, "writes")
    if key in columns:
        raise ValueError("writes cannot include the key column")
    wanted = [key, *columns]

    def select_output_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, wanted)
        return df[wanted].copy()

    return select_output_fn
