"""Versioned schema migrations: files, their classification, a linter and a runner."""

from __future__ import annotations

from migrations.schema.backfills import BackfillHooks
from migrations.schema.classify import Category
from migrations.schema.lint import Finding, lint
from migrations.schema.runner import SchemaRunner, Step
from migrations.schema.source import (
    MigrationFile,
    Phase,
    Statement,
    load_directory,
    parse_migration,
)

__all__ = [
    "BackfillHooks",
    "Category",
    "Finding",
    "MigrationFile",
    "Phase",
    "SchemaRunner",
    "Statement",
    "Step",
    "lint",
    "load_directory",
    "parse_migration",
]
