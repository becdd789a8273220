"""The admin's SVG line charts."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import pytest

from tunery.dashboard.charts import line_chart_svg, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("low", "high"), [(0, 1), (0.0231, 0.0987), (3, 3), (-5, 120), (1e-6, 4e-6)])
def test_ticks_cover_the_range_with_even_steps(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low
    assert ticks[-1] >= high
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    assert 2 <= len(ticks) <= 12


def test_chart_draws_one_line_per_series_through_every_point():
    svg = line_chart_svg({"train_loss": [(1, 2.0), (2, 1.5), (3, 0.9)], "valid_loss": [(3, 1.1)]}, title="Loss")
    root = ET.fromstring(svg)  # noqa: S314
    lines = {p.get("data-series"): p.get("points").split() for p in root.iter(f"{SVG}polyline")}
    assert set(lines) == {"train_loss", "valid_loss"}
    assert len(lines["train_loss"]) == 3
    ys = [float(point.split(",")[1]) for point in lines["train_loss"]]
    assert ys[0] > ys[1] > ys[2] or ys[0] < ys[1] < ys[2]
    # SVG y grows downwards: falling loss is a line going down the page, i.e. growing y.
    assert ys[0] < ys[2]


def test_chart_skips_non_finite_values_and_escapes_names():
    svg = line_chart_svg({"<script>": [(1, math.nan), (2, 0.5), (3, math.inf), (4, 0.4)]}, title="a & b")
    root = ET.fromstring(svg)  # noqa: S314 - our own SVG; well-formed despite the hostile name
    (line,) = root.iter(f"{SVG}polyline")
    assert len(line.get("points").split()) == 2
    assert "<script>" not in svg


def test_empty_chart_says_there_is_no_data():
    svg = line_chart_svg({"train_loss": []}, title="Loss")
    assert "no data yet" in svg
    assert not list(ET.fromstring(svg).iter(f"{SVG}polyline"))  # noqa: S314
