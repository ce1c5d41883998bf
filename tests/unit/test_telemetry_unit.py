"""Telemetry without services: configuration, redaction, chunk spans and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from migrations.errors import TransientChunkError
from workers import telemetry
from workers.model import ChunkResult

PHI = "Alice Example 123-45-6789"


@pytest.fixture
def captured() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(telemetry.RedactingProcessor(SimpleSpanProcessor(exporter)))
    reader = InMemoryMetricReader()
    before = telemetry.use(provider, MeterProvider(metric_readers=[reader]))
    yield exporter, reader
    telemetry.restore(before)


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def test_nothing_is_exported_unless_asked() -> None:
    config = telemetry.TelemetryConfig.from_env({}, service="ferry-worker")
    assert (config.traces, config.metrics, config.links) == ((), (), False)
    assert config.service_name == "ferry-worker"


def test_standard_variables_choose_exporters_and_links() -> None:
    config = telemetry.TelemetryConfig.from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp, console,none",
            "OTEL_METRICS_EXPORTER": "console,zipkin",
            "OTEL_SERVICE_NAME": "ferry-prod",
            "FERRY_TRACE_LINKS": "1",
        },
        service="ferry-worker",
    )
    assert config.traces == ("otlp", "console")
    assert config.metrics == ("console",)  # an unknown exporter is skipped, not fatal
    assert config.links is True
    assert config.service_name == "ferry-prod"
    disabled = telemetry.TelemetryConfig.from_env(
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, service="x"
    )
    assert disabled.traces == ()


def test_statements_exceptions_and_statuses_are_redacted(
    captured: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, _ = captured
    tracer = telemetry.current().tracer
    with tracer.start_as_current_span("SELECT", record_exception=False) as span:
        span.set_attribute("db.statement", f"select * from t where name = '{PHI}'")
        span.set_attribute("db.query.text", f"UPDATE t SET x = '{PHI}'")
        span.set_attribute("db.statement.parameters", str((PHI,)))
        span.set_attribute("db.system", "postgresql")
        try:
            raise ValueError(f'invalid input syntax for type integer: "{PHI}"')
        except ValueError as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, str(exc))
    (done,) = exporter.get_finished_spans()
    assert done.attributes is not None
    assert dict(done.attributes) == {
        "db.statement": "SELECT",
        "db.query.text": "UPDATE",
        "db.system": "postgresql",
    }
    (event,) = done.events
    assert event.attributes is not None
    assert "exception.stacktrace" not in event.attributes
    assert event.attributes["exception.type"] == "ValueError"
    assert "integer" in str(event.attributes["exception.message"])
    assert done.status.description is not None and "integer" in done.status.description
    assert PHI not in repr(done.to_json())


def test_statement_labels_name_ledger_queries_and_keep_only_the_operation_otherwise() -> None:
    from workers.queries import queries

    assert telemetry.statement_label(queries()["finish_chunk"]) == "finish_chunk"
    commented = f"-- {PHI}\n/* '{PHI}' */ update t set name = '{PHI}'"
    assert telemetry.statement_label(commented) == "UPDATE"
    assert telemetry.statement_label("HINCRBY ? ?") == "HINCRBY"
    assert telemetry.statement_label("  ") == ""


def test_a_failing_step_records_a_value_free_description_and_no_exception_event(
    captured: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, _ = captured
    with pytest.raises(psycopg.DataError), telemetry.step("ferry.write"):
        raise psycopg.DataError(f'invalid input syntax for type integer: "{PHI}"')
    (span,) = exporter.get_finished_spans()
    assert span.name == "ferry.write"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None
    assert span.status.description.startswith("----- DataError: invalid input syntax")
    assert span.events == ()
    assert span.attributes is not None and span.attributes["error.type"] == "DataError"
    assert PHI not in repr(span.to_json())


def test_chunk_span_counts_rows_in_flight_and_duration(
    captured: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, reader = captured
    with telemetry.chunk_span(7, 3) as observe:
        assert points(reader)["ferry.chunks.in_flight"][0].value == 1
        with telemetry.step("ferry.commit"):
            telemetry.mark_range("100", "200")  # on the current span: the step
        observe(
            ChunkResult(
                run_id=7,
                chunk_no=3,
                outcome="done",
                rows_read=100,
                rows_written=90,
                rows_quarantined=4,
                attempt=2,
            )
        )
    with pytest.raises(TransientChunkError), telemetry.chunk_span(7, 4):
        err = TransientChunkError("40P01 DeadlockDetected: deadlock detected")
        err.attempt = 3
        raise err
    spans = {
        s.name + str(s.attributes and s.attributes.get("ferry.chunk_no")): s
        for s in exporter.get_finished_spans()
    }
    first, second = spans["ferry.chunk3"], spans["ferry.chunk4"]
    assert first.attributes is not None and second.attributes is not None
    assert {k: v for k, v in first.attributes.items() if k.startswith("ferry.")} == {
        "ferry.run_id": 7,
        "ferry.chunk_no": 3,
        "ferry.outcome": "done",
        "ferry.attempt": 2,
        "ferry.rows_read": 100,
        "ferry.rows_written": 90,
        "ferry.rows_quarantined": 4,
    }
    commit = spans["ferry.commitNone"]
    assert commit.parent is not None and commit.parent.span_id == first.context.span_id
    assert commit.attributes is not None
    assert (commit.attributes["ferry.key_lo"], commit.attributes["ferry.key_hi"]) == (
        "100",
        "200",
    )
    assert second.status.status_code is StatusCode.ERROR
    assert second.attributes["ferry.attempt"] == 3
    got = points(reader)
    assert [p.value for p in got["ferry.rows.read"]] == [100]
    assert [p.value for p in got["ferry.rows.written"]] == [90]
    assert [p.value for p in got["ferry.rows.quarantined"]] == [4]
    assert [p.value for p in got["ferry.chunks.in_flight"]] == [0]
    durations = {p.attributes["ferry.outcome"]: p.count for p in got["ferry.chunk.duration"]}
    assert durations == {"done": 1, "error": 1}
    assert got["ferry.worker.memory"][0].value > 0
    assert got["ferry.worker.cpu.utilization"][0].value >= 0


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("worker memory limit", "memory"),
        ("concurrency", "concurrency"),
        ("rows per second", "rows_per_second"),
        ("database load", "db_load"),
        ("health probe failed: OperationalError", "health_probe"),
        ("limiter unavailable: ConnectionError", "limiter"),
        ("run paused", "paused"),
        ("paused: active_backends 140 >= 128", "health_pause"),
        ("something new", "other"),
    ],
)
def test_throttle_reasons_become_a_small_label_set(reason: str, label: str) -> None:
    assert telemetry.throttle_reason(reason) == label


def test_outcomes_and_throttle_waits_are_counted(
    captured: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, reader = captured
    for outcome in ("done", "done", "retried", "failed"):
        telemetry.chunk_outcome(5, outcome)
    telemetry.throttled(5, "wait", "rows per second")
    telemetry.throttled(5, "defer", "paused: lock_waits 40 >= 32")
    got = points(reader)
    outcomes = {p.attributes["ferry.outcome"]: p.value for p in got["ferry.chunk.outcomes"]}
    assert outcomes == {"done": 2, "retried": 1, "failed": 1}
    waits = {
        (p.attributes["ferry.decision"], p.attributes["ferry.reason"]): p.value
        for p in got["ferry.throttle.waits"]
    }
    assert waits == {("wait", "rows_per_second"): 1, ("defer", "health_pause"): 1}


def test_a_phi_keys_bounds_are_masked_on_the_span(
    captured: tuple[InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    exporter, _ = captured
    with telemetry.chunk_span(7, 4), telemetry.step("ferry.write"):
        telemetry.mark_range("MRN-000123-SMITH", None, phi=True)
    (write,) = [s for s in exporter.get_finished_spans() if s.name == "ferry.write"]
    assert write.attributes is not None and write.attributes["ferry.key_lo"] == "***"
    assert "ferry.key_hi" not in write.attributes
    assert "SMITH" not in repr([s.to_json() for s in exporter.get_finished_spans()])
