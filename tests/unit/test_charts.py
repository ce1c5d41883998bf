"""The report's charts: series arithmetic and well-formed, escaped SVG (no services)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.charts import (
    Bin,
    Span,
    bar_chart,
    bucket_edges,
    fmt,
    histogram,
    line_chart,
    nice_ceiling,
    per_bucket,
    sparkline,
    spread,
)

SVG = "{http://www.w3.org/2000/svg}"


def test_bucket_edges_cover_the_window() -> None:
    assert bucket_edges(10.0, 20.0, 4) == [10.0, 12.5, 15.0, 17.5, 20.0]
    assert bucket_edges(5.0, 5.0, 2) == [5.0, 5.5, 6.0]  # zero-length window: one second
    with pytest.raises(ValueError):
        bucket_edges(0.0, 1.0, 0)


def test_spread_shares_a_span_by_overlap() -> None:
    edges = [0.0, 2.0, 4.0, 6.0, 8.0]
    assert spread([Span(start=3.0, end=7.0, amount=100.0)], edges) == [0.0, 25.0, 50.0, 25.0]
    assert spread([Span(start=4.0, end=4.0, amount=7.0)], edges) == [0.0, 0.0, 7.0, 0.0]


@given(
    st.lists(
        st.tuples(
            st.floats(0, 100, allow_nan=False),
            st.floats(0, 100, allow_nan=False),
            st.floats(0, 1e6, allow_nan=False),
        ),
        max_size=30,
    ),
    st.integers(1, 40),
)
def test_spread_keeps_every_row_inside_the_window(
    raw: list[tuple[float, float, float]], buckets: int
) -> None:
    spans = [Span(start=a, end=b, amount=n) for a, b, n in raw]
    totals = spread(spans, bucket_edges(0.0, 100.0, buckets))
    assert sum(totals) == pytest.approx(sum(s.amount for s in spans), rel=1e-9, abs=1e-6)
    assert all(t >= 0 for t in totals)


def test_per_bucket_sums_instants_and_clamps_outliers() -> None:
    edges = [0.0, 10.0, 20.0]
    assert per_bucket([(1.0, 2.0), (9.9, 1.0), (10.0, 5.0), (99.0, 1.0), (-3.0, 1.0)], edges) == [
        4.0,
        6.0,
    ]


def test_histogram_bins_every_value_once() -> None:
    values = [1.0, 2.0, 2.5, 9.0, 10.0]
    bins = histogram(values, bins=3)
    assert [b.count for b in bins] == [3, 0, 2]
    assert bins[0].lo == 1.0 and bins[-1].hi == pytest.approx(10.0)
    assert histogram([], bins=3) == []
    assert histogram([4.0, 4.0], bins=5) == [Bin(lo=4.0, hi=4.0, count=2)]


@given(st.lists(st.floats(0, 1e7, allow_nan=False), min_size=1, max_size=200), st.integers(1, 30))
def test_histogram_counts_add_up(values: list[float], bins: int) -> None:
    assert sum(b.count for b in histogram(values, bins)) == len(values)


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1.0), (0.7, 1.0), (1, 1.0), (1.2, 2.0), (2.2, 2.5), (3, 5.0), (730, 1000)],
)
def test_nice_ceiling(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


def test_sparkline_and_labels() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 4, 8]) == "▁▅█"
    assert [fmt(v) for v in (0, 12, 1500, 2_300_000, 0.25)] == ["0", "12", "1.5k", "2.3M", "0.25"]


def test_line_chart_is_well_formed_svg_with_one_point_per_value() -> None:
    svg = line_chart(
        [0, 1, 2, 3],
        {"read": [0, 5, 10, 2.5], "written": [0, 1, 1, 0]},
        title="rows/s",
        x_label="s",
        y_label="rows",
    )
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2 and lines[0].attrib["stroke"] != lines[1].attrib["stroke"]
    read, written = (
        [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()] for line in lines
    )
    assert len(read) == len(written) == 4
    ys = [y for _, y in read]
    assert ys[2] == min(ys)  # the largest value is drawn highest
    assert ys[0] == max(ys) == written[0][1]  # zero on the same baseline
    assert written[1][1] > read[1][1]  # one shared scale
    legend = [t.text for t in root.findall(f"{SVG}text")]
    assert "read" in legend and "written" in legend
    with pytest.raises(ValueError):
        line_chart([0], {"a": [1, 2]}, title="t", x_label="x", y_label="y")


def test_chart_text_is_escaped() -> None:
    hostile = '<script>alert("x")</script> & co'
    for svg in (
        line_chart([0], {hostile: [1]}, title=hostile, x_label=hostile, y_label=hostile),
        bar_chart([Bin(lo=0, hi=1, count=3)], title=hostile, x_label=hostile, y_label=hostile),
    ):
        assert "<script>" not in svg
        root = ET.fromstring(svg)  # still well formed
        title = root.find(f"{SVG}title")
        assert title is not None and title.text == hostile


def test_bar_chart_heights_follow_counts() -> None:
    svg = bar_chart(
        [Bin(lo=0, hi=1, count=1), Bin(lo=1, hi=2, count=4), Bin(lo=2, hi=3, count=0)],
        title="durations",
        x_label="ms",
        y_label="chunks",
    )
    rects = ET.fromstring(svg).findall(f"{SVG}rect")
    heights = [float(r.attrib["height"]) for r in rects]
    assert len(heights) == 3
    assert heights[1] == pytest.approx(4 * heights[0]) and heights[2] == 0
