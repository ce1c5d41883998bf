"""OpenTelemetry traces and metrics for runs and chunks, set up once per process.

Nothing is exported unless the standard variables ask for it (``OTEL_TRACES_EXPORTER``,
``OTEL_METRICS_EXPORTER`` = ``otlp`` | ``console`` | ``none``, default ``none``): without
them no provider is installed, every span and instrument below is the API's no-op and the
chunk path pays a few microseconds. A prefork worker sets up in each pool child after the
fork (``worker_process_init``: a parent's exporter threads and sockets do not survive a fork)
and flushes on ``worker_process_shutdown`` and at exit; the coordinator sets up on its first
``launch`` span.

One trace per run: the coordinator's ``ferry.launch`` span is the parent of each task's
publish span, whose context travels in the Celery message headers to the worker's
``run/ferry.chunk`` span and the ``ferry.chunk`` span under it. ``FERRY_TRACE_LINKS=1`` makes
each worker-side task span start a trace of its own with a link to its publish span instead,
so a run of many thousands of chunks is not one giant trace.

A chunk span's children: ``ferry.lock`` (the chunk's row locks, on the SQL path with rules),
on the pandas path
``ferry.read`` (COPY out), ``ferry.transform``, ``ferry.validate`` (Python rules) and
``ferry.stage`` (COPY into the temp table), then ``ferry.write`` (the one chunk statement:
on the SQL path it also computes the new values and checks the SQL rules),
``ferry.write_missed`` (only when the application changed some of the chunk's rows after
they were read: the second statement over them, on the pandas path after they are read
again, locked, and transformed) and ``ferry.commit``. Database and
Redis calls appear under them as client spans.

No PHI leaves the process: Ferry's attributes are ids, counts and the key range's bounds;
every span passes through ``RedactingProcessor`` before any exporter, which keeps only the
name of a ledger query (``finish_chunk``) or the operation word of any other statement
(``SELECT``, ``HINCRBY``), drops parameters and stack traces, and masks quoted literals in
exception messages and status descriptions.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider

from migrations.masking import MASK, mask_text
from workers.failures import describe
from workers.gate import resident_mb
from workers.model import ChunkResult
from workers.queries import queries

log = logging.getLogger("ferry.telemetry")
SCOPE = "ferry"
EXPORTERS = ("otlp", "console", "none")
# Statement text holds literals (key bounds, filters, masked values): only the name of a
# ledger query, or else the statement's first word, stays.
LEADING_COMMENTS = re.compile(r"^\s*(?:--[^\n]*(?:\n|$)|/\*.*?\*/|\s)*", re.DOTALL)
STATEMENT_KEYS = frozenset({"db.statement", "db.query.text"})
DROPPED_KEYS = frozenset({"db.statement.parameters", "exception.stacktrace"})
MASKED_KEYS = frozenset({"exception.message", "celery.retry.reason"})


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """What the standard ``OTEL_*`` variables and ``FERRY_TRACE_LINKS`` ask for."""

    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    links: bool = False
    service_name: str = "ferry"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, service: str) -> TelemetryConfig:
        env = os.environ if env is None else env
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(service_name=service)
        return cls(
            traces=_exporters(env.get("OTEL_TRACES_EXPORTER")),
            metrics=_exporters(env.get("OTEL_METRICS_EXPORTER")),
            links=env.get("FERRY_TRACE_LINKS", "").strip().lower() in ("1", "true", "yes"),
            service_name=env.get("OTEL_SERVICE_NAME") or service,
        )


def _exporters(raw: str | None) -> tuple[str, ...]:
    """``otlp,console`` -> both; unknown names are reported and skipped, never fatal."""
    names = []
    for name in (raw or "none").split(","):
        name = name.strip().lower()
        if name not in EXPORTERS:
            log.warning("telemetry: unknown exporter %r ignored (use otlp, console or none)", name)
        elif name != "none" and name not in names:
            names.append(name)
    return tuple(names)


# -- redaction -------------------------------------------------------------------------------
@cache
def _query_names() -> dict[str, str]:
    return {body: name for name, body in queries().items()}


def statement_label(text: str) -> str:
    """A ledger query's name (``finish_chunk``), or the statement's operation (``UPDATE``)."""
    name = _query_names().get(text.strip().rstrip(";"))
    if name is not None:
        return name
    words = LEADING_COMMENTS.sub("", text, count=1).split(None, 1)
    return words[0].upper() if words else ""


def redact_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if key in DROPPED_KEYS:
            continue
        if key in STATEMENT_KEYS:
            value = statement_label(str(value))
        elif key in MASKED_KEYS:
            value = mask_text(str(value).splitlines()[0] if str(value) else "")
        out[key] = value
    return out


def redact(span: ReadableSpan) -> ReadableSpan:
    """A copy of a finished span with nothing that could hold a row value."""
    status = span.status
    if status.description:
        status = Status(status.status_code, mask_text(status.description.splitlines()[0]))
    events = [
        Event(e.name, redact_attributes(e.attributes), timestamp=e.timestamp) for e in span.events
    ]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingProcessor(SpanProcessor):
    """Hands the inner processor (and so every exporter) redacted copies of finished spans."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.inner.on_end(redact(span))

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# -- metrics ---------------------------------------------------------------------------------
class Meters:
    """Ferry's instruments; recording is an in-memory aggregation, exported by a thread."""

    def __init__(self, meter: Meter) -> None:
        self.rows_read = meter.create_counter(
            "ferry.rows.read", unit="{row}", description="Rows read (processed) by done chunks"
        )
        self.rows_written = meter.create_counter(
            "ferry.rows.written", unit="{row}", description="Rows changed by done chunks"
        )
        self.rows_quarantined = meter.create_counter(
            "ferry.rows.quarantined", unit="{row}", description="Rows a skip rule quarantined"
        )
        self.chunk_duration = meter.create_histogram(
            "ferry.chunk.duration", unit="s", description="Wall time of a chunk, claim to commit"
        )
        self.chunk_outcomes = meter.create_counter(
            "ferry.chunk.outcomes", unit="{chunk}", description="Chunk task outcomes by result"
        )
        self.throttle_waits = meter.create_counter(
            "ferry.throttle.waits", unit="{wait}", description="Chunks the gate held back"
        )
        self.in_flight = meter.create_up_down_counter(
            "ferry.chunks.in_flight", unit="{chunk}", description="Chunks being applied"
        )
        self._cpu_last = (_cpu_seconds(), time.monotonic())
        meter.create_observable_gauge(
            "ferry.worker.memory",
            callbacks=[self._memory],
            unit="By",
            description="Resident memory of this worker process",
        )
        meter.create_observable_gauge(
            "ferry.worker.cpu.utilization",
            callbacks=[self._cpu],
            unit="1",
            description="Cores this process used since the last observation",
        )

    def _memory(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(resident_mb() * 2**20), {"process.pid": os.getpid()})

    def _cpu(self, _: CallbackOptions) -> Iterable[Observation]:
        cpu, now = _cpu_seconds(), time.monotonic()
        last_cpu, last_t = self._cpu_last
        self._cpu_last = (cpu, now)
        yield Observation((cpu - last_cpu) / max(now - last_t, 1e-6), {"process.pid": os.getpid()})


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass(frozen=True)
class Telemetry:
    tracer: Tracer
    meters: Meters


_current: list[Telemetry] = []


def current() -> Telemetry:
    """Ferry's tracer and instruments (the global providers' unless ``use`` replaced them)."""
    if not _current:
        _current.append(Telemetry(trace.get_tracer(SCOPE), Meters(metrics.get_meter(SCOPE))))
    return _current[0]


def use(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> Telemetry | None:
    """Record into these providers from now on (tests); returns what was used before."""
    before = _current[0] if _current else None
    tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer(SCOPE)
    meter = (meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
    _current[:] = [Telemetry(tracer, Meters(meter))]
    return before


def restore(previous: Telemetry | None) -> None:
    _current[:] = [previous] if previous is not None else []


# -- setup -----------------------------------------------------------------------------------
_SETUP: dict[int, tuple[SdkTracerProvider | None, SdkMeterProvider | None]] = {}


def setup(service: str, env: Mapping[str, str] | None = None) -> TelemetryConfig:
    """Install providers and instrumentation in this process, once; a no-op by default."""
    config = TelemetryConfig.from_env(env, service=service)
    if os.getpid() in _SETUP:
        return config
    resource_ = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource_.attributes.get("service.name", "")).startswith("unknown_service"):
        resource_ = resource_.merge(Resource({"service.name": config.service_name}))
    tracer_provider = meter_provider = None
    if config.traces:
        tracer_provider = SdkTracerProvider(resource=resource_)
        for name in config.traces:
            tracer_provider.add_span_processor(
                RedactingProcessor(BatchSpanProcessor(_span_exporter(name)))
            )
        trace.set_tracer_provider(tracer_provider)
    if config.metrics:
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(_metric_exporter(name)) for name in config.metrics
        ]
        meter_provider = SdkMeterProvider(resource=resource_, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
    _SETUP[os.getpid()] = (tracer_provider, meter_provider)
    if tracer_provider is not None:
        _instrument(tracer_provider, meter_provider, links=config.links)
    if tracer_provider is not None or meter_provider is not None:
        atexit.register(shutdown)
    return config


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # Endpoint, headers, timeout and compression come from OTEL_EXPORTER_OTLP_* (http/protobuf).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def _instrument(
    tracer_provider: SdkTracerProvider, meter_provider: SdkMeterProvider | None, *, links: bool
) -> None:
    """Celery (context in message headers), psycopg and Redis client spans.

    psycopg only, not SQLAlchemy as well: Ferry runs every statement on the pooled driver
    connection, so instrumenting both would report each statement twice. Statement text is
    recorded by the instrumentation and cut to its first word by ``RedactingProcessor``;
    parameters are never captured.
    """
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    providers: dict[str, Any] = {"tracer_provider": tracer_provider}
    if meter_provider is not None:
        providers["meter_provider"] = meter_provider
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(**providers, use_span_links=links)
    PsycopgInstrumentor().instrument(
        tracer_provider=tracer_provider, enable_commenter=False, capture_parameters=False
    )
    RedisInstrumentor().instrument(tracer_provider=tracer_provider)


def shutdown() -> None:
    """Flush and stop this process's providers (worker child exit, or interpreter exit)."""
    tracer_provider, meter_provider = _SETUP.get(os.getpid(), (None, None))
    for provider in (tracer_provider, meter_provider):
        if provider is not None:
            try:
                provider.shutdown()
            except Exception as exc:  # an unreachable collector must not hang or fail exit
                log.warning("telemetry: flush failed: %s", type(exc).__name__)
    _SETUP[os.getpid()] = (None, None)


# -- spans and records -----------------------------------------------------------------------
def _failed(span: Span, exc: BaseException) -> None:
    span.set_status(Status(StatusCode.ERROR, describe(exc)))
    span.set_attribute("error.type", type(exc).__name__)


@contextmanager
def step(name: str, tel: Telemetry | None = None) -> Iterator[Span]:
    """A child span of the current one; a failure is recorded as its value-free description."""
    tracer = (tel or current()).tracer
    with tracer.start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            _failed(span, exc)
            raise


@contextmanager
def launch_span() -> Iterator[Span]:
    """The coordinator's root span of a run; sets telemetry up in this process first."""
    setup("ferry-coordinator")
    with step("ferry.launch") as span:
        yield span


def key_bound(value: Any) -> str | int | None:
    """A key-range bound as an attribute value (ints stay numbers)."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def mark_range(lo: Any, hi: Any, *, phi: bool = False) -> None:
    """Put the chunk's key-range bounds (only them) on the current span; a PHI key's bounds
    are row values, shown as ``***`` (the span still says whether a bound exists)."""
    span = trace.get_current_span()
    for name, value in (("ferry.key_lo", key_bound(lo)), ("ferry.key_hi", key_bound(hi))):
        if value is not None:
            span.set_attribute(name, MASK if phi else value)


@contextmanager
def chunk_span(run_id: int, chunk_no: int) -> Iterator[Callable[[ChunkResult], None]]:
    """The chunk's span and its in-flight, duration and row metrics.

    Yields ``observe(result)``, to be called with the chunk's result.
    """
    tel = current()
    meters = tel.meters
    attrs = {"ferry.run_id": run_id}
    started = time.perf_counter()
    outcome = "error"
    meters.in_flight.add(1, attrs)
    with step("ferry.chunk", tel) as span:
        span.set_attribute("ferry.run_id", run_id)
        span.set_attribute("ferry.chunk_no", chunk_no)

        def observe(result: ChunkResult) -> None:
            nonlocal outcome
            outcome = result.outcome
            span.set_attribute("ferry.outcome", result.outcome)
            if result.attempt:
                span.set_attribute("ferry.attempt", result.attempt)
            if result.outcome != "done":
                return
            span.set_attribute("ferry.rows_read", result.rows_read)
            span.set_attribute("ferry.rows_written", result.rows_written)
            span.set_attribute("ferry.rows_quarantined", result.rows_quarantined)
            meters.rows_read.add(result.rows_read, attrs)
            meters.rows_written.add(result.rows_written, attrs)
            meters.rows_quarantined.add(result.rows_quarantined, attrs)

        try:
            yield observe
        except BaseException as exc:
            attempt = getattr(exc, "attempt", 0)
            if attempt:
                span.set_attribute("ferry.attempt", attempt)
            raise
        finally:
            meters.in_flight.add(-1, attrs)
            meters.chunk_duration.record(
                time.perf_counter() - started, {**attrs, "ferry.outcome": outcome}
            )


def chunk_outcome(run_id: int, outcome: str) -> None:
    """Count a chunk task's result: done, noop, retried or failed."""
    current().meters.chunk_outcomes.add(1, {"ferry.run_id": run_id, "ferry.outcome": outcome})


THROTTLE_REASONS = (
    ("worker memory", "memory"),
    ("concurrency", "concurrency"),
    ("rows per second", "rows_per_second"),
    ("database load", "db_load"),
    ("health probe", "health_probe"),
    ("limiter", "limiter"),
    ("run paused", "paused"),
    ("paused:", "health_pause"),
)


def throttle_reason(reason: str) -> str:
    """The gate's reason as a label of a small fixed set (its text carries measured values)."""
    for prefix, label in THROTTLE_REASONS:
        if reason.startswith(prefix):
            return label
    return "other"


def throttled(run_id: int, kind: str, reason: str) -> None:
    """Count a chunk the gate made wait (retried later) or deferred (paused run)."""
    current().meters.throttle_waits.add(
        1,
        {"ferry.run_id": run_id, "ferry.decision": kind, "ferry.reason": throttle_reason(reason)},
    )
