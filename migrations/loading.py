"""Loading a Backfill by reference: ``package.module:attr`` or ``path/file.py:attr``.

A file reference is resolved to an absolute path when the run starts, so every
worker imports the same file whatever its working directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from migrations.errors import BadInput, SpecError
from migrations.spec import Backfill


def normalize_reference(ref: str) -> str:
    """Return the reference in the form a worker elsewhere can load."""
    target, attr = _split(ref)
    if _is_path(target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return ref


def load_backfill(ref: str) -> Backfill:
    """Import the object a reference names and check that it is a Backfill."""
    target, attr = _split(ref)
    module = _import_path(target) if _is_path(target) else _import_module(target)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadInput(f"{target} has no attribute {attr!r}") from None
    if not isinstance(obj, Backfill):
        raise SpecError(f"{ref} is a {type(obj).__name__}, not a Backfill")
    return obj


def _split(ref: str) -> tuple[str, str]:
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise BadInput(f"reference {ref!r} must look like package.module:name or file.py:name")
    return target, attr


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise BadInput(f"cannot import module {name!r}") from None
        raise BadInput(f"importing {name!r} failed: missing module {exc.name!r}") from None


def _import_path(target: str) -> object:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise BadInput(f"no such file: {target}")
    module_name = "ferry_spec_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module
