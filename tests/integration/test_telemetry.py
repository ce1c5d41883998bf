"""Traces and metrics across real processes: ``ferry launch`` -> Celery -> a worker's chunks.

The worker and the CLI export with OTLP over HTTP to a receiver this test runs (a tiny
http.server decoding the protobuf requests), exactly as they would to a collector. The
table holds names and SSN-like strings; none of them may appear in anything exported.
"""

from __future__ import annotations

import gzip
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.conftest import WorkerPool
from tests.helpers import launch, spec_file, wait_run

pytestmark = pytest.mark.services

NAME, SSN = "Alice Example", "123-45-"
SPEC = """
def upper_name(df):
    return pd.DataFrame({"id": df["id"], "name_upper": df["full_name"].str.upper()})

sqlrun = Backfill(table="phi_patients", key="id", reads=["weight_lb"], writes=["weight_kg"],
                  sql={"weight_kg": "round(weight_lb * 0.4536, 2)"},
                  rules=[ValidationRule(field="weight_kg", type="range", condition="20..300",
                                        error_message="implausible weight")],
                  chunk_size=100)
pandasrun = Backfill(table="phi_patients", key="id", reads=["full_name"], writes=["name_upper"],
                     transform=upper_name,
                     rules=[ValidationRule(field="name_upper", type="custom",
                                           check=lambda d: d["name_upper"].str.len() < 100,
                                           error_message="name too long")],
                     chunk_size=100)
# The first 200 rows pass the launch's pre-flight; the one chunk fails on row 251 with a
# PostgreSQL error whose text quotes the SSN.
badrun = Backfill(table="phi_patients", key="id", reads=["weight_lb", "ssn"], writes=["weight_kg"],
                  sql={"weight_kg": "CASE WHEN id > 250 THEN ssn::numeric ELSE weight_lb END"},
                  chunk_size=300)
"""


class Receiver:
    """An OTLP/HTTP endpoint keeping every request, raw and decoded."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                reply: Any
                with receiver.lock:
                    receiver.raw.append(body)
                    if self.path == "/v1/traces":
                        receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                        reply = ExportTraceServiceResponse()
                    else:
                        receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                        reply = ExportMetricsServiceResponse()
                payload = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[Span, dict[str, Any]]]:
        with self.lock:
            requests = list(self.traces)
        out = []
        for request in requests:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    out.extend((span, attributes(span.attributes)) for span in ss.spans)
        return out

    def counter(self, name: str, label: str) -> dict[Any, int]:
        """A cumulative counter's latest value by one attribute, summed over the others."""
        with self.lock:
            requests = list(self.metrics)
        latest: dict[tuple[tuple[str, Any], ...], int] = {}
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != name:
                            continue
                        for point in metric.sum.data_points:
                            key = tuple(sorted(attributes(point.attributes).items()))
                            latest[key] = max(latest.get(key, 0), point.as_int)
        out: dict[Any, int] = {}
        for key, count in latest.items():
            out[dict(key).get(label)] = out.get(dict(key).get(label), 0) + count
        return out


def _wait_for_counter(
    receiver: Receiver, name: str, label: str, expected: dict[Any, int], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while receiver.counter(name, label) != expected:
        assert time.monotonic() < deadline, (name, receiver.counter(name, label), expected)
        time.sleep(0.3)


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
def traced_env(own_env: dict[str, str], receiver: Receiver) -> dict[str, str]:
    """Worker and CLI export spans and metrics to the receiver, flushing quickly."""
    own_env.update(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
        OTEL_SERVICE_NAME="ferry-test",
    )
    return own_env


def _phi_table(db: psycopg.Connection[Any]) -> None:
    db.execute("DROP TABLE IF EXISTS phi_patients")
    db.execute(
        "CREATE TABLE phi_patients (id bigint PRIMARY KEY, full_name text, ssn text, "
        "weight_lb numeric, weight_kg numeric, name_upper text)"
    )
    db.execute(
        "INSERT INTO phi_patients (id, full_name, ssn, weight_lb) SELECT g, "
        "%s || ' ' || g, %s || lpad(g::text, 4, '0'), "
        "CASE WHEN g %% 50 = 0 THEN 5000 ELSE 100 + g %% 200 END "
        "FROM generate_series(1, 300) g",
        (NAME, SSN),
    )


def _by_id(spans: list[tuple[Span, dict[str, Any]]]) -> dict[bytes, tuple[Span, dict[str, Any]]]:
    return {span.span_id: (span, attrs) for span, attrs in spans}


def _wait_for_chunks(
    receiver: Receiver, expected: dict[int, int], timeout: float = 60
) -> list[tuple[Span, dict[str, Any]]]:
    """Spans once every run's launch span and all its chunk spans have arrived, each chunk
    span with the task span it ran in (that one ends later and may come in a later batch)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.spans()
        launches = {a.get("ferry.run_id") for s, a in spans if s.name == "ferry.launch"}
        ids = {s.span_id for s, _ in spans}
        chunks: dict[int, set[int]] = {}
        orphans = 0
        for span, attrs in spans:
            if span.name == "ferry.chunk":
                chunks.setdefault(attrs["ferry.run_id"], set()).add(attrs["ferry.chunk_no"])
                orphans += span.parent_span_id not in ids
        complete = all(
            run in launches and len(chunks.get(run, ())) == n for run, n in expected.items()
        )
        if complete and not orphans:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(
                f"spans missing: launches {launches}, chunks {chunks}, "
                f"{orphans} chunk spans without their task span"
            )
        time.sleep(0.3)


def _chunk_count(db: psycopg.Connection[Any], run_id: int) -> int:
    row = db.execute("SELECT count(*) FROM ferry.chunks WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_one_trace_from_launch_to_every_chunk_with_steps_attributes_and_no_phi(
    db: psycopg.Connection[Any],
    traced_env: dict[str, str],
    pool: WorkerPool,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    _phi_table(db)
    spec = spec_file(tmp_path, SPEC)
    pool.start("w1")
    runs = {
        # a literal in --where lands in the SQL text of the planner's and workers' statements
        "sql": launch(traced_env, f"{spec}:sqlrun", "--where", f"full_name <> '{NAME} 0'"),
    }
    assert wait_run(db, runs["sql"]) == "completed_with_errors"  # implausible weights
    runs["pandas"] = launch(traced_env, f"{spec}:pandasrun")
    assert wait_run(db, runs["pandas"]) == "completed"
    runs["bad"] = launch(traced_env, f"{spec}:badrun")
    assert wait_run(db, runs["bad"]) == "failed"
    spans = _wait_for_chunks(receiver, {run: _chunk_count(db, run) for run in runs.values()})
    index = _by_id(spans)
    children: dict[bytes, list[Span]] = {}
    for span, _ in spans:
        children.setdefault(span.parent_span_id, []).append(span)

    def ancestors(span: Span) -> list[str]:
        names = []
        while span.parent_span_id in index:
            span = index[span.parent_span_id][0]
            names.append(span.name)
        return names

    def subtree(span: Span) -> list[Span]:
        found = list(children.get(span.span_id, []))
        for child in list(found):
            found.extend(subtree(child))
        return found

    for kind, run_id in runs.items():
        (launch_span,) = [
            s for s, a in spans if s.name == "ferry.launch" and a.get("ferry.run_id") == run_id
        ]
        chunk_spans = [
            (s, a) for s, a in spans if s.name == "ferry.chunk" and a["ferry.run_id"] == run_id
        ]
        assert chunk_spans
        for span, attrs in chunk_spans:
            # one trace: launch -> publish -> the worker's task span -> the chunk
            assert span.trace_id == launch_span.trace_id
            assert ancestors(span) == ["run/ferry.chunk", "apply_async/ferry.chunk", "ferry.launch"]
            assert attrs["ferry.attempt"] >= 1
            assert "ferry.key_hi" in attrs
            if attrs["ferry.chunk_no"] > 0:
                assert "ferry.key_lo" in attrs
            steps = [c.name for c in children.get(span.span_id, []) if c.name.startswith("ferry.")]
            below = subtree(span)
            assert any(attributes(c.attributes).get("db.system") == "postgresql" for c in below), (
                "psycopg client spans under the chunk"
            )
            if kind == "bad":
                assert span.status.code == Status.STATUS_CODE_ERROR
                # the SQLSTATE and the message with the quoted value masked
                assert "22P02 InvalidTextRepresentation" in span.status.message
                assert span.status.message.endswith('numeric: "***"')
                assert steps == ["ferry.write"]  # no rules: no locking pass before it
                continue
            assert span.status.code != Status.STATUS_CODE_ERROR
            if kind == "sql":
                assert steps == ["ferry.lock", "ferry.write", "ferry.commit"]  # it has rules
            else:
                assert steps == [  # the read takes the row locks
                    "ferry.read",
                    "ferry.transform",
                    "ferry.validate",
                    "ferry.stage",
                    "ferry.write",
                    "ferry.commit",
                ]
        ledger = db.execute(
            "SELECT coalesce(sum(rows_read), 0), coalesce(sum(rows_written), 0),"
            " coalesce(sum(rows_quarantined), 0) FROM ferry.chunks WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        traced = tuple(
            sum(a.get(f"ferry.rows_{n}", 0) for _, a in chunk_spans)
            for n in ("read", "written", "quarantined")
        )
        assert traced == ledger
    quarantined = [a["ferry.rows_quarantined"] for _, a in spans if "ferry.rows_quarantined" in a]
    assert sum(quarantined) == 6  # 300 rows, every 50th implausible
    assert any(a.get("db.system") == "redis" for _, a in spans), "redis client spans"
    statements = {a["db.statement"] for _, a in spans if "db.statement" in a}
    # ledger queries by name, any other statement by its operation word only (";" is
    # SQLAlchemy's pre-ping; the chunk statement begins WITH)
    assert {"claim_chunk", "finish_chunk", "SELECT", "WITH", "HINCRBY"} <= statements
    assert all(re.fullmatch(r"[a-z_]+|[A-Z]+|;", s) for s in statements), statements

    # Metrics from the worker process: rows and chunk outcomes by run, as the ledger has them.
    written = db.execute(
        "SELECT run_id, sum(rows_written) FROM ferry.chunks WHERE run_id = ANY(%s)"
        " AND status = 'done' GROUP BY run_id",
        (list(runs.values()),),
    ).fetchall()
    expected = {run: int(n) for run, n in written}
    _wait_for_counter(receiver, "ferry.rows.written", "ferry.run_id", expected)
    done = sum(_chunk_count(db, run) for run in (runs["sql"], runs["pandas"]))
    _wait_for_counter(
        receiver, "ferry.chunk.outcomes", "ferry.outcome", {"done": done, "failed": 1}
    )

    # Nothing exported, in any field of any request, holds a row value.
    with receiver.lock:
        raw = b"".join(receiver.raw)
    assert NAME.encode() not in raw and SSN.encode() not in raw
    assert NAME.upper().encode() not in raw


def test_links_mode_gives_each_chunk_its_own_trace_linked_to_the_launch(
    db: psycopg.Connection[Any],
    traced_env: dict[str, str],
    pool: WorkerPool,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    _phi_table(db)
    spec = spec_file(tmp_path, SPEC)
    traced_env["FERRY_TRACE_LINKS"] = "1"
    pool.start("w1")
    # A rows/s budget below one chunk a second: the gate makes chunks wait, and says why.
    run_id = launch(traced_env, f"{spec}:sqlrun", "--rows-per-second", "150")
    assert wait_run(db, run_id) == "completed_with_errors"
    spans = _wait_for_chunks(receiver, {run_id: _chunk_count(db, run_id)})
    index = _by_id(spans)
    (launch_span,) = [s for s, a in spans if s.name == "ferry.launch"]
    chunk_traces = set()
    for span, _ in [(s, a) for s, a in spans if s.name == "ferry.chunk"]:
        task = index[span.parent_span_id][0]
        assert task.name == "run/ferry.chunk"
        assert task.trace_id != launch_span.trace_id and not task.parent_span_id
        chunk_traces.add(span.trace_id)
        # Follow the links back: a chunk the gate made wait was re-sent from its previous
        # attempt's task span (in that attempt's trace); the first was sent by the launch.
        for _ in range(50):
            (link,) = task.links
            publish = index[link.span_id][0]
            assert publish.name == "apply_async/ferry.chunk"
            if publish.trace_id == launch_span.trace_id:
                assert publish.parent_span_id == launch_span.span_id
                break
            task = index[publish.parent_span_id][0]
        else:
            raise AssertionError("no link path back to the launch")
    assert len(chunk_traces) == _chunk_count(db, run_id)
    deadline = time.monotonic() + 30
    while not receiver.counter("ferry.throttle.waits", "ferry.reason").get("rows_per_second"):
        assert time.monotonic() < deadline, receiver.counter("ferry.throttle.waits", "ferry.reason")
        time.sleep(0.3)


def test_chunk_executor_in_process_records_metrics_matching_the_ledger(
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ledger_ready: None,
) -> None:
    """No worker consumes the test's queue: this executor applies every chunk itself."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from workers import telemetry
    from workers.db import Database
    from workers.execution import ChunkExecutor
    from workers.ledger import Ledger
    from workers.progress import MemoryProgress
    from workers.settings import Settings

    _phi_table(db)
    spec = spec_file(tmp_path, SPEC)
    run_id = launch(own_env, f"{spec}:sqlrun")
    for name in ("FERRY_DATABASE_URL", "FERRY_REDIS_URL", "FERRY_QUEUE"):
        monkeypatch.setenv(name, own_env[name])
    settings = Settings.from_env()
    database = Database(settings)
    reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(telemetry.RedactingProcessor(SimpleSpanProcessor(exporter)))
    before = telemetry.use(tracer_provider, MeterProvider(metric_readers=[reader]))
    try:
        executor = ChunkExecutor(
            database, Ledger(database), settings, MemoryProgress(), "pytest:metrics"
        )
        results = [executor.apply(run_id, n) for n in range(_chunk_count(db, run_id))]
    finally:
        telemetry.restore(before)
        database.dispose()
    assert {r.outcome for r in results} == {"done"}
    data = reader.get_metrics_data()
    assert data is not None
    got: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                got.setdefault(metric.name, []).extend(metric.data.data_points)
    ledger = db.execute(
        "SELECT sum(rows_read), sum(rows_written), sum(rows_quarantined), count(*)"
        " FROM ferry.chunks WHERE run_id = %s AND status = 'done'",
        (run_id,),
    ).fetchone()
    assert ledger is not None
    counted = tuple(
        sum(p.value for p in got[f"ferry.rows.{n}"]) for n in ("read", "written", "quarantined")
    )
    assert counted == tuple(int(v) for v in ledger[:3])
    assert counted[2] == 6
    (durations,) = got["ferry.chunk.duration"]
    assert durations.count == ledger[3] and durations.sum > 0
    assert durations.attributes == {"ferry.run_id": run_id, "ferry.outcome": "done"}
    assert [p.value for p in got["ferry.chunks.in_flight"]] == [0]
    assert got["ferry.worker.memory"][0].value > 0
    chunk_spans = [s for s in exporter.get_finished_spans() if s.name == "ferry.chunk"]
    assert len(chunk_spans) == len(results)
    assert all(s.parent is None for s in chunk_spans)  # no task span in-process: roots
