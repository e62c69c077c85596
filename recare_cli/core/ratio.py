"""RATIO: the normalised area of a radar chart (method.md §8), and the maps that bring each score to [0, 1].

A radar chart with ``n`` axes at equal angles ``2π/n`` places axis ``i``'s value ``r_i`` at distance
``r_i`` from the centre; the polygon through those points is cut by the spokes into ``n`` triangles
of area ``½ r_i r_{i+1} sin(2π/n)``. RATIO is that area divided by the area of the polygon with
every value 1, so the ``sin`` cancels:

    RATIO = Σ_i r_i · r_{i+1 mod n} / n

It is 1 when every axis is 1, 0 when at most one axis is non-zero, and depends on the order of the
axes (neighbours multiply). The radar chart itself is drawn here too, as SVG text or PNG bytes (PIL), from
the same geometry. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_AXES = 3  # two axes at angle π span no area


def polygon_area(values: Sequence[float]) -> float:
    """Area of the radar polygon of ``values`` (each the distance of its vertex from the centre)."""
    n = len(values)
    if n < MIN_AXES:
        raise ValueError(f"a radar polygon needs at least {MIN_AXES} axes, got {n}")
    return 0.5 * math.sin(2 * math.pi / n) * sum(values[i] * values[(i + 1) % n] for i in range(n))


def ratio(values: Sequence[float]) -> float:
    """The radar polygon's area relative to the all-ones polygon's: ``Σ r_i r_{i+1} / n``."""
    n = len(values)
    if n < MIN_AXES:
        raise ValueError(f"RATIO needs at least {MIN_AXES} axes, got {n}")
    return sum(values[i] * values[(i + 1) % n] for i in range(n)) / n


def vertices(values: Sequence[float], radius: float, cx: float, cy: float) -> list[tuple[float, float]]:
    """Screen coordinates (y down) of the polygon's vertices: axis 0 points up, the rest follow clockwise."""
    n = len(values)
    out = []
    for i, value in enumerate(values):
        angle = -math.pi / 2 + 2 * math.pi * i / n
        out.append((cx + radius * value * math.cos(angle), cy + radius * value * math.sin(angle)))
    return out


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def defense(asr: float) -> float:
    """Defense = 1 − attack success rate (a fraction)."""
    return clamp01(1.0 - asr)


def higher_vs_base(value: float, base: float) -> float:
    """A score where higher is better, relative to the base model's: ``min(1, value / base)``, at least 0.
    ``base`` must be positive."""
    if not base > 0:
        raise ValueError(f"the base value must be positive, got {base}")
    return clamp01(value / base)


def lower_vs_base(value: float, base: float) -> float:
    """A distance where lower is better, relative to the base model's: 1 when ``value <= base``, else
    ``base / value`` (so a distance twice the base's maps to 0.5)."""
    if value < 0 or base < 0:
        raise ValueError(f"distances are not negative, got {value} and {base}")
    return 1.0 if value <= base else base / value


def exp_decay(value: float, tau: float) -> float:
    """A distance mapped by ``exp(−value / tau)``: 1 at 0, 1/e at ``tau``."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return clamp01(math.exp(-value / tau))


def min_max(values: Sequence[float], *, higher_is_better: bool) -> list[float]:
    """Each value placed between the worst (0) and the best (1) of ``values``; all 1 when they are equal."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0 for _ in values]
    if higher_is_better:
        return [(v - lo) / (hi - lo) for v in values]
    return [(hi - v) / (hi - lo) for v in values]


# --- the chart -------------------------------------------------------------------------------------------------

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
_SIZE, _CENTRE, _RADIUS, _LEGEND_TOP, _LEGEND_STEP = 520, 250.0, 170.0, 470, 22
RINGS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class _Chart:
    """The radar's geometry, shared by the SVG and the PNG."""

    labels: list[tuple[str, float, float, str]]  # text, x, y, anchor (start, middle, end)
    rings: list[list[tuple[float, float]]]
    spokes: list[tuple[float, float]]
    shapes: list[tuple[str, str, list[tuple[float, float]]]]  # legend text, colour, polygon
    height: int


def _chart(axes: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]) -> _Chart:
    n = len(axes)
    if n < MIN_AXES:
        raise ValueError(f"a radar chart needs at least {MIN_AXES} axes, got {n}")
    ones = [1.0] * n
    labels = []
    for name, (x, y) in zip(axes, vertices(ones, _RADIUS + 18, _CENTRE, _CENTRE), strict=True):
        anchor = "middle" if abs(x - _CENTRE) < 1 else ("start" if x > _CENTRE else "end")
        labels.append((name, x, y + (5 if abs(y - _CENTRE) < 1 else (12 if y > _CENTRE else -4)), anchor))
    shapes = [(text, PALETTE[i % len(PALETTE)], vertices(values, _RADIUS, _CENTRE, _CENTRE))
              for i, (text, values) in enumerate(series)]
    return _Chart(labels, [vertices([r] * n, _RADIUS, _CENTRE, _CENTRE) for r in RINGS],
                  vertices(ones, _RADIUS, _CENTRE, _CENTRE), shapes,
                  _LEGEND_TOP + _LEGEND_STEP * max(1, len(shapes)))


def _pts(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in points)


def radar_svg(axes: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]) -> str:
    """A radar chart as SVG text: one polygon per ``(legend text, values)`` of ``series`` over ``axes``, values in
    [0, 1]. Fixed geometry and number formatting: the same input gives the same bytes."""
    from xml.sax.saxutils import escape

    chart = _chart(axes, series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SIZE}" height="{chart.height}" '
           f'viewBox="0 0 {_SIZE} {chart.height}" font-family="sans-serif" font-size="14">',
           f'<rect width="{_SIZE}" height="{chart.height}" fill="#ffffff"/>']
    for ring in chart.rings:
        out.append(f'<polygon points="{_pts(ring)}" fill="none" stroke="#cccccc" stroke-width="1"/>')
    for x, y in chart.spokes:
        out.append(f'<line x1="{_CENTRE:.2f}" y1="{_CENTRE:.2f}" x2="{x:.2f}" y2="{y:.2f}" stroke="#cccccc" '
                   'stroke-width="1"/>')
    for text, x, y, anchor in chart.labels:
        out.append(f'<text x="{x:.2f}" y="{y:.2f}" text-anchor="{anchor}" fill="#333333">{escape(text)}</text>')
    for i, (text, colour, points) in enumerate(chart.shapes):
        out.append(f'<polygon points="{_pts(points)}" fill="{colour}" fill-opacity="0.15" stroke="{colour}" '
                   'stroke-width="2"/>')
        y = _LEGEND_TOP + _LEGEND_STEP * i
        out.append(f'<rect x="40" y="{y - 11}" width="14" height="14" fill="{colour}"/>')
        out.append(f'<text x="62" y="{y}" fill="#333333">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def radar_png(axes: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """The chart of :func:`radar_svg` as PNG bytes, drawn with PIL on the same geometry."""
    import io
    from typing import Any

    from PIL import Image, ImageDraw, ImageFont

    chart = _chart(axes, series)
    try:
        font: Any = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the bitmap font has one size
        font = ImageFont.load_default()
    image = Image.new("RGBA", (_SIZE, chart.height), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    for ring in chart.rings:
        draw.polygon(ring, outline=(204, 204, 204, 255))
    for x, y in chart.spokes:
        draw.line([(_CENTRE, _CENTRE), (x, y)], fill=(204, 204, 204, 255))

    def text(x: float, y: float, words: str, anchor: str) -> None:  # y is the baseline, as in SVG
        left, _top, right, bottom = draw.textbbox((0, 0), words, font=font)
        width = right - left
        dx = {"start": 0.0, "middle": -width / 2, "end": -width}[anchor]
        draw.text((x + dx, y - bottom), words, font=font, fill=(51, 51, 51, 255))

    for words, x, y, anchor in chart.labels:
        text(x, y, words, anchor)
    for i, (words, colour, points) in enumerate(chart.shapes):
        rgb = tuple(int(colour[j:j + 2], 16) for j in (1, 3, 5))
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        ImageDraw.Draw(layer).polygon(points, fill=(*rgb, 38))
        image = Image.alpha_composite(image, layer)
        draw = ImageDraw.Draw(image)
        draw.line([*points, points[0]], fill=(*rgb, 255), width=2)
        y = _LEGEND_TOP + _LEGEND_STEP * i
        draw.rectangle([40, y - 11, 54, y + 3], fill=(*rgb, 255))
        text(62, y, words, "start")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
