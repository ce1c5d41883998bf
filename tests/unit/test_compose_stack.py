"""docker-compose.yml is valid, has the whole stack, and publishes nothing on a public interface.

``docker-compose config`` (Compose's own parser and interpolation) is the judge of validity;
the rendered file is then read as text, since no YAML library is a dependency: every
``ports:`` entry of every service must carry 127.0.0.1 (short or long syntax).
Skipped locally without a ``docker-compose`` binary; under CI (CI=true) its absence fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"postgres", "redis", "worker", "flower", "coordinator", "otel-collector", "jaeger"}
ENV = {
    **os.environ,
    "POSTGRES_PASSWORD": "compose-test",
    "FLOWER_BASIC_AUTH": "admin:compose-test",
}


def _compose(*args: str) -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed under CI (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed")
    proc = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _services(rendered: str) -> dict[str, str]:
    """Each service's block of the rendered file (two-space keys under ``services:``)."""
    body = ("\n" + rendered).split("\nservices:\n", 1)[1]
    blocks: dict[str, str] = {}
    name = None
    for line in body.splitlines():
        if line and not line.startswith(" "):
            break  # the next top-level key
        top = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
        if top:
            name = top.group(1)
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line + "\n"
    return blocks


def _ports(block: str) -> list[str]:
    """The entries of a service's ``ports:`` list, each as one string."""
    lines = block.splitlines()
    entries: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() != "ports:":
            continue
        indent = len(line) - len(line.lstrip())
        for item in lines[i + 1 :]:
            depth = len(item) - len(item.lstrip())
            if depth < indent or (depth == indent and not item.lstrip().startswith("- ")):
                break
            if item.lstrip().startswith("- "):
                entries.append(item.strip())
            elif entries:
                entries[-1] += " " + item.strip()
    return entries


def test_compose_file_is_valid() -> None:
    _compose("config", "-q")


def test_the_whole_stack_is_there_with_telemetry_wired() -> None:
    blocks = _services(_compose("config"))
    assert set(blocks) == SERVICES
    for name in ("worker", "coordinator", "flower"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4318" in blocks[name], name
        assert "OTEL_TRACES_EXPORTER: otlp" in blocks[name], name
        assert "OTEL_METRICS_EXPORTER: otlp" in blocks[name], name
        assert f"OTEL_SERVICE_NAME: ferry-{name}" in blocks[name], name
    assert "otel-collector.yaml:/etc/otelcol-contrib/config.yaml" in blocks["otel-collector"]
    assert "opentelemetry-collector-contrib" in blocks["otel-collector"]
    assert "jaegertracing/all-in-one" in blocks["jaeger"]


def test_flower_needs_auth_and_nothing_is_published_publicly() -> None:
    blocks = _services(_compose("config"))
    assert '--basic-auth="$${FLOWER_BASIC_AUTH}"' in blocks["flower"]
    assert "exit 1" in blocks["flower"]  # refuses to start without credentials
    published = {name: _ports(block) for name, block in blocks.items()}
    assert published["flower"], "Flower is reachable from the host"
    assert not published["worker"] and not published["postgres"] and not published["redis"]
    for name, entries in published.items():
        for entry in entries:
            assert "127.0.0.1" in entry, f"{name} publishes {entry!r} on every interface"


def test_collector_config_sends_traces_to_jaeger_and_strips_statements() -> None:
    text = (ROOT / "deploy" / "otel-collector.yaml").read_text()
    assert re.search(r"otlp/jaeger:\n\s+endpoint: jaeger:4317", text)
    assert re.search(r"traces:\n(\s+.*\n)*?\s+exporters: \[otlp/jaeger\]", text)
    assert re.search(r"processors: \[memory_limiter, attributes/phi, batch\]", text)
    assert "key: db.statement\n        action: delete" in text
    assert "endpoint: 0.0.0.0:4318" in text


def test_procfile_runs_what_compose_runs() -> None:
    procs = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    assert set(procs) == {"worker", "flower"}
    compose = (ROOT / "docker-compose.yml").read_text()
    worker = re.search(r"\n    command: (celery -A workers worker .*)\n", compose)
    assert worker is not None
    assert procs["worker"].endswith(worker.group(1))
    assert "OTEL_SERVICE_NAME=${OTEL_SERVICE_NAME:-ferry-worker}" in procs["worker"]
    assert "celery -A workers flower" in procs["flower"]
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in procs["flower"]  # no auth, no start
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in procs["flower"]
