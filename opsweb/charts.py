"""Small server-rendered SVG charts for admin pages: no JavaScript, no files to serve, so the
console draws them offline and under the strict content security policy.

Every text that reaches the markup is escaped; the result is safe to put in a template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28
LABELS = 7  # at most this many axis labels, so that dates never overlap
BAR = "#417690"  # the admin's own blue
MARK = "#ba2121"  # the admin's error red, for p90 marks and the target line


@dataclass
class Point:
    """One bar: its axis label, value (None draws nothing) and an optional marker value."""

    label: str
    value: float | None
    mark: float | None = None


def bar_chart(
    title: str,
    points: list[Point],
    *,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    target: float | None = None,
    target_label: str = "",
) -> SafeString:
    """An SVG bar chart of ``points`` (oldest first). ``fmt`` formats values for the axis and
    the tooltips; ``target`` draws a dashed horizontal line (e.g. the RTO)."""
    values = [v for p in points for v in (p.value, p.mark) if v is not None]
    top = max([*values, target or 0, 0]) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(points), 1)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'style="max-width:{WIDTH}px" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{y(0):.1f}" x2="{WIDTH - RIGHT}" y2="{y(0):.1f}" stroke="#999"/>',
        axis_label(LEFT - 4, y(top) + 4, fmt(top)),
        axis_label(LEFT - 4, y(0), fmt(0)),
    ]
    for index, point in enumerate(points):
        x = LEFT + index * step
        parts.append(bar(point, x, step, y, fmt))
        if index % max(1, -(-len(points) // LABELS)) == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{HEIGHT - 10}" font-size="10" '
                f'text-anchor="middle" fill="#666">{escape(point.label)}</text>'
            )
    if target is not None:
        parts.append(
            f'<line x1="{LEFT}" y1="{y(target):.1f}" x2="{WIDTH - RIGHT}" y2="{y(target):.1f}" '
            f'stroke="{MARK}" stroke-dasharray="4 3"><title>{escape(target_label)}</title></line>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every dynamic text above is escaped)


def bar(point: Point, x: float, step: float, y, fmt) -> str:
    if point.value is None:
        return ""
    width = max(step * 0.7, 1)
    tip = f"{point.label}: {fmt(point.value)}"
    if point.mark is not None:
        tip += f" (p90 {fmt(point.mark)})"
    shapes = (
        f'<rect class="bar" x="{x + (step - width) / 2:.1f}" y="{y(point.value):.1f}" '
        f'width="{width:.1f}" height="{y(0) - y(point.value):.1f}" fill="{BAR}">'
        f"<title>{escape(tip)}</title></rect>"
    )
    if point.mark is not None:
        shapes += (
            f'<line x1="{x + (step - width) / 2:.1f}" x2="{x + (step + width) / 2:.1f}" '
            f'y1="{y(point.mark):.1f}" y2="{y(point.mark):.1f}" stroke="{MARK}" stroke-width="2"/>'
        )
    return shapes


def axis_label(x: float, y: float, text: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" text-anchor="end" fill="#666">'
        f"{escape(text)}</text>"
    )
