"""Transforms named from the ``transforms`` library, with parameters, instead of code.

A Backfill may say ``transform="standardize_dates", params={"src": "dob_text", "dst": "dob"}``,
or a pipeline of such steps, ``transform=[("standardize_dates", {...}), ("convert_units",
{...})]``. The steps are plain data: they are stored in the run as they are, so a worker
builds the very same transform from the ledger, with no user module to import, and the run's
fingerprint covers the parameters and the library code that runs them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from migrations.errors import SpecError

if TYPE_CHECKING:
    import pandas as pd

# The library (and pandas with it) is imported when a named transform is first looked at:
# every ``ferry`` command imports this module, and most of them never run a transform.
Transform = Callable[["pd.DataFrame"], "pd.DataFrame"]
Step = tuple[str, dict[str, Any]]


@functools.cache
def nameable() -> frozenset[str]:
    """Factories a Backfill may name: those returning fn(df) -> df from plain parameters.
    pipeline composes steps itself; cached_reference and clear_reference_cache are not
    transforms."""
    import transforms

    return frozenset(transforms.__all__) - {
        "pipeline",
        "cached_reference",
        "clear_reference_cache",
    }


def parse_steps(transform: object, params: Mapping[str, Any] | None) -> tuple[Step, ...] | None:
    """The named steps a Backfill's ``transform`` gives, or None when it is a function."""
    if callable(transform) or transform is None:
        if params is not None:
            raise SpecError("params go with a named transform (transform='name'), not a function")
        return None
    if isinstance(transform, str):
        steps: list[tuple[object, object]] = [(transform, dict(params or {}))]
    elif isinstance(transform, Sequence) and params is None:
        steps = []
        for item in transform:
            if not (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2):
                raise SpecError("a transform pipeline is a list of (name, {params}) pairs")
            steps.append((item[0], item[1]))
    else:
        raise SpecError("transform must be a function, a library name, or (name, params) pairs")
    if not steps:
        raise SpecError("a transform pipeline needs at least one step")
    checked: list[Step] = []
    for name, step_params in steps:
        if not isinstance(name, str) or name not in nameable():
            known = ", ".join(sorted(nameable()))
            raise SpecError(f"unknown transform {name!r}: the library has {known}")
        if not isinstance(step_params, Mapping):
            raise SpecError(f"params of {name} must be a mapping of parameter names to values")
        try:
            canonical = json.loads(json.dumps(dict(step_params), sort_keys=True))
        except (TypeError, ValueError):
            raise SpecError(f"params of {name} must be JSON values (stored with the run)") from None
        checked.append((name, canonical))
    build(tuple(checked))  # the factories check their parameters now, not on a worker
    return tuple(checked)


def build(steps: tuple[Step, ...]) -> Transform:
    """The transform the steps describe (factories' ValueError becomes SpecError)."""
    import transforms

    made = []
    for name, params in steps:
        factory = getattr(transforms, name)
        try:
            made.append(factory(**params))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"transform {name}: {exc}") from None
    return made[0] if len(made) == 1 else transforms.pipeline(*made)


def identity(steps: tuple[Step, ...]) -> dict[str, Any]:
    """Name, steps and a fingerprint of the parameters and of the library code that runs them."""
    import transforms

    digest = hashlib.sha256(json.dumps(steps, sort_keys=True).encode())
    for name, _ in steps:
        module = inspect.getmodule(getattr(transforms, name))
        digest.update(inspect.getsource(module).encode() if module else name.encode())
    return {
        "name": " | ".join(f"transforms:{name}" for name, _ in steps),
        "sha256": digest.hexdigest(),
        "named": [{"name": name, "params": params} for name, params in steps],
    }


def steps_of(stored: Mapping[str, Any] | None) -> tuple[Step, ...] | None:
    """The named steps a run's stored transform identity holds, if it is a named one."""
    if not stored or not stored.get("named"):
        return None
    return tuple((str(s["name"]), dict(s["params"])) for s in stored["named"])
