"""Geometry of the latency chart that templates draw as inline SVG, and the health panel's context."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.conf import settings

from provisioning.uptime import LatencySeries, UptimeWindow

WIDTH = 480
HEIGHT = 180
PLOT_LEFT = 48
PLOT_TOP = 12
PLOT_WIDTH = WIDTH - PLOT_LEFT - 8
PLOT_HEIGHT = HEIGHT - PLOT_TOP - 28


@dataclass(frozen=True)
class AxisLabel:
    """A tick label at `x`, `y` in SVG user units."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class DownMark:
    """A bar over one hour that had failed checks."""

    x: float
    width: float
    title: str


@dataclass(frozen=True)
class LatencyChart:
    """An SVG chart of mean latency per hour: one polyline per run of hours with up checks."""

    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_width: int
    plot_height: int
    plot_bottom: int
    lines: list[str]
    points: list[AxisLabel]
    down_marks: list[DownMark]
    y_labels: list[AxisLabel]
    x_labels: list[AxisLabel]


def _axis_max(value_ms: float) -> float:
    """Round the largest latency up to 1, 2 or 5 times a power of ten, so the axis reads well."""
    if value_ms <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value_ms))
    for step in (1, 2, 5, 10):
        if value_ms <= step * power:
            return float(step * power)
    return float(10 * power)


def latency_chart(series: LatencySeries) -> LatencyChart:
    """Lay out `series` for the SVG template; hours without up checks break the line."""
    count = len(series.buckets)
    slot = PLOT_WIDTH / count
    means = [bucket.mean_latency_ms for bucket in series.buckets if bucket.mean_latency_ms is not None]
    axis_max = _axis_max(max(means) if means else 0.0)
    plot_bottom = PLOT_TOP + PLOT_HEIGHT

    lines: list[str] = []
    points: list[AxisLabel] = []
    run: list[str] = []
    for index, bucket in enumerate(series.buckets):
        if bucket.mean_latency_ms is None:
            if run:
                lines.append(" ".join(run))
            run = []
            continue
        x = PLOT_LEFT + (index + 0.5) * slot
        y = plot_bottom - bucket.mean_latency_ms / axis_max * PLOT_HEIGHT
        run.append(f"{x:.1f},{y:.1f}")
        points.append(AxisLabel(x=round(x, 1), y=round(y, 1), text=f"{bucket.start:%H:%M} UTC: {bucket.mean_latency_ms:.1f} ms"))
    if run:
        lines.append(" ".join(run))

    down_marks = [
        DownMark(
            x=round(PLOT_LEFT + index * slot, 1),
            width=round(slot, 1),
            title=f"{bucket.start:%H:%M} UTC: {bucket.down_count} failed check{'' if bucket.down_count == 1 else 's'}",
        )
        for index, bucket in enumerate(series.buckets)
        if bucket.down_count
    ]
    y_labels = [
        AxisLabel(x=PLOT_LEFT - 6, y=round(plot_bottom - fraction * PLOT_HEIGHT + 4, 1), text=f"{axis_max * fraction:g} ms")
        for fraction in (0, 0.5, 1)
    ]
    x_labels = [
        AxisLabel(x=round(PLOT_LEFT + index * slot, 1), y=HEIGHT - 8, text=f"{series.buckets[index].start:%H:%M}")
        for index in range(0, count, max(1, count // 4))
    ]
    return LatencyChart(
        width=WIDTH,
        height=HEIGHT,
        plot_left=PLOT_LEFT,
        plot_top=PLOT_TOP,
        plot_width=PLOT_WIDTH,
        plot_height=PLOT_HEIGHT,
        plot_bottom=plot_bottom,
        lines=lines,
        points=points,
        down_marks=down_marks,
        y_labels=y_labels,
        x_labels=x_labels,
    )


def health_panel_context(
    *,
    windows: list[UptimeWindow],
    series: LatencySeries,
    subject: str,
    probed: bool = True,
    by_agent: bool = False,
    many_servers: bool = False,
) -> dict:
    """Return the `health` context of `provisioning/includes/health_panel.html`.

    `subject` names what was probed in the panel's text. `probed` is False for servers the
    platform does not probe (Sandbox), so that the empty state promises no checks. `by_agent` is
    True for servers of an agent pool, whose agent reports the checks instead of the platform.
    `many_servers` explains coverage for a provider's servers taken together.
    """
    return {
        "uptime_windows": windows,
        "latency_series": series,
        "latency_chart": latency_chart(series) if series.has_checks else None,
        "has_checks": series.has_checks or any(window.known_seconds for window in windows),
        "health_subject": subject,
        "probed": probed,
        "by_agent": by_agent,
        "many_servers": many_servers,
        "probe_interval_seconds": settings.HEALTH_PROBE_INTERVAL_SECONDS,
        "min_coverage_percent": settings.HEALTH_UPTIME_MIN_COVERAGE * 100,
    }
