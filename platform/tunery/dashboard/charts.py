"""Line charts as self-contained SVG (no JavaScript, no external assets: the admin runs air-gapped)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

Series = Mapping[str, Sequence[tuple[float, float]]]

#: Colour-blind-safe palette (Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 16, 28, 40


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart_svg(series: Series, *, title: str, x_label: str = "step", width: int = 640, height: int = 280) -> str:
    """An SVG line chart of named (x, y) series; points with a non-finite y are skipped."""
    clean = {
        name: sorted((float(x), float(y)) for x, y in points if math.isfinite(float(y)) and math.isfinite(float(x)))
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" class="tunery-chart">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-family="sans-serif">'
        f"{escape(title)}</text>",
    ]
    if not clean:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" '
            f'font-family="sans-serif" fill="#666">no data yet</text></svg>'
        )
        return "".join(parts)

    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w = width - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - _MARGIN_BOTTOM

    def px(x: float) -> float:
        return _MARGIN_LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return _MARGIN_TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    font = 'font-size="11" font-family="sans-serif" fill="#333"'
    for tick in y_ticks:
        parts.append(
            f'<line x1="{_MARGIN_LEFT}" x2="{width - _MARGIN_RIGHT}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" '
            f'stroke="#e5e5e5"/><text x="{_MARGIN_LEFT - 6}" y="{py(tick) + 4:.1f}" text-anchor="end" {font}>'
            f"{_label(tick)}</text>"
        )
    for tick in x_ticks:
        parts.append(
            f'<text x="{px(tick):.1f}" y="{height - _MARGIN_BOTTOM + 16}" text-anchor="middle" {font}>'
            f"{_label(tick)}</text>"
        )
    parts.append(
        f'<line x1="{_MARGIN_LEFT}" x2="{width - _MARGIN_RIGHT}" y1="{_MARGIN_TOP + plot_h}" '
        f'y2="{_MARGIN_TOP + plot_h}" stroke="#333"/>'
        f'<text x="{_MARGIN_LEFT + plot_w / 2}" y="{height - 6}" text-anchor="middle" {font}>{escape(x_label)}</text>'
    )
    for index, (name, points) in enumerate(sorted(clean.items())):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-series="{escape(name)}" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
        legend_y = _MARGIN_TOP + 4 + 14 * index
        parts.append(
            f'<rect x="{width - _MARGIN_RIGHT - 130}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{width - _MARGIN_RIGHT - 116}" y="{legend_y + 9}" {font}>{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
