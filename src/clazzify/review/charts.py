"""The Stats page's charts as server-rendered SVG: no JavaScript, no Node build.

Each function takes plain numbers (what :func:`clazzify.review.queues.chart_data` reads) and
returns one ``<svg>`` element as :class:`markupsafe.Markup`; every text in it is escaped.
Every bar and point carries a ``<title>`` (the browser's tooltip) with its exact numbers,
and each chart an ``aria-label`` saying what it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from markupsafe import Markup, escape

#: Class colours, in class order (colour-blind-safe Okabe-Ito, then Tableau extras).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#999999", "#6f4e7c", "#4e79a7")
UNKNOWN_COLOUR = "#6d28d9"
INK, MUTED, GRID = "#1d2330", "#6b7385", "#e2e5eb"


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(label)}" '
            f'font-family="system-ui, sans-serif" font-size="11">')
    return Markup(head + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = MUTED,
          size: int = 11, weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}" '
            f'font-size="{size}" font-weight="{weight}">{escape(text)}</text>')


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
            f'fill="{fill}"><title>{escape(title)}</title></rect>')


def _day(d: date) -> str:
    return d.strftime("%d %b")


def class_mix(
    days: Sequence[date],
    counts: Mapping[date, Mapping[str, int]],
    classes: Sequence[str],
    training: Mapping[str, float] | None,
) -> Markup:
    """One 100% stacked bar per day (class shares of the photos scored that day), with the
    training mix as the first bar for reference; days without photos are an empty track."""
    width, bar_h, gap, left, top = 560, 14, 5, 58, 8
    rows: list[tuple[str, Mapping[str, float] | None, int]] = []
    if training:
        rows.append(("training", training, -1))
    for d in days:
        day = counts.get(d, {})
        total = sum(day.values())
        rows.append((_day(d), {c: day.get(c, 0) / total for c in classes} if total else None, total))
    legend_y = top + len(rows) * (bar_h + gap) + 14
    height = legend_y + 12
    span = width - left - 52
    body = []
    for i, (name, shares, total) in enumerate(rows):
        y = top + i * (bar_h + gap)
        weight = "bold" if total < 0 else "normal"
        body.append(_text(left - 6, y + bar_h - 3, name, anchor="end",
                          fill=INK if total < 0 else MUTED, weight=weight))
        body.append(f'<rect x="{left}" y="{y}" width="{span}" height="{bar_h}" fill="#f3f4f7"/>')
        if shares is None:
            body.append(_text(left + 6, y + bar_h - 3, "no photos"))
            continue
        x = float(left)
        for k, c in enumerate(classes):
            w = span * shares.get(c, 0.0)
            what = "training set" if total < 0 else f"{name}: {round(shares.get(c, 0) * total)} of {total}"
            body.append(_rect(x, y, w, bar_h, colour(k), f"{c}: {shares.get(c, 0):.1%} ({what})"))
            x += w
        if total >= 0:
            body.append(_text(width - 48, y + bar_h - 3, f"{total:,}"))
        if total < 0:
            body.append(f'<line x1="{left}" x2="{left + span}" y1="{y + bar_h + gap / 2:.1f}" '
                        f'y2="{y + bar_h + gap / 2:.1f}" stroke="{INK}" stroke-width="0.6" '
                        'stroke-dasharray="3 2"/>')
    x = float(left)
    for k, c in enumerate(classes):
        body.append(f'<rect x="{x:.1f}" y="{legend_y - 8}" width="10" height="10" fill="{colour(k)}"/>')
        body.append(_text(x + 14, legend_y + 1, c, fill=INK))
        x += 24 + 7 * len(c)
    body.append(_text(width - 48, legend_y + 1, "photos"))
    return _svg(width, height, "Class mix per day against the training mix", body)


def confidence(in_dist: Sequence[int], flagged: Sequence[int]) -> Markup:
    """A histogram of the top probability in equal bins over [0, 1]: photos scored as a
    class, with the photos flagged unknown stacked on top."""
    width, height, left, bottom, top = 560, 200, 40, 28, 10
    bins = len(in_dist)
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max([a + b for a, b in zip(in_dist, flagged, strict=True)] + [1])
    body = _y_grid(left, top, plot_w, plot_h, peak, count=True)
    bw = plot_w / bins
    for i, (a, b) in enumerate(zip(in_dist, flagged, strict=True)):
        lo, hi = i / bins, (i + 1) / bins
        h_a, h_b = plot_h * a / peak, plot_h * b / peak
        x = left + i * bw + 1
        body.append(_rect(x, top + plot_h - h_a, bw - 2, h_a, "#0072B2",
                          f"top probability {lo:.2f}-{hi:.2f}: {a:,} photos scored as a class"))
        if b:
            body.append(_rect(x, top + plot_h - h_a - h_b, bw - 2, h_b, UNKNOWN_COLOUR,
                              f"top probability {lo:.2f}-{hi:.2f}: {b:,} photos flagged unknown"))
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        body.append(_text(left + plot_w * tick, height - bottom + 14, f"{tick:.2f}", anchor="middle"))
    body.append(_text(left + plot_w / 2, height - 2, "top class probability", anchor="middle"))
    body.append(f'<rect x="{left + 8}" y="{top + 2}" width="10" height="10" fill="#0072B2"/>')
    body.append(_text(left + 22, top + 11, "scored as a class", fill=INK))
    body.append(f'<rect x="{left + 130}" y="{top + 2}" width="10" height="10" fill="{UNKNOWN_COLOUR}"/>')
    body.append(_text(left + 144, top + 11, "flagged unknown", fill=INK))
    return _svg(width, height, "Distribution of the model's top class probability", body)


def _y_grid(left: float, top: float, plot_w: float, plot_h: float, peak: float, *,
            count: bool) -> list[str]:
    body = []
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{GRID}"/>')
        label = f"{round(peak * frac):,}" if count else f"{peak * frac:.0%}"
        body.append(_text(left - 4, y + 4, label, anchor="end"))
    return body


def _labelled(i: int, n: int) -> bool:
    """Whether day ``i`` of ``n`` gets an axis label: today, and evenly spaced back from it."""
    step = max(1, -(-n // 7))
    return (n - 1 - i) % step == 0


def _nice_ceiling(value: float) -> float:
    for step in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        if value <= step:
            return step
    return 1.0


def unknown_rate(days: Sequence[date], per_day: Mapping[date, tuple[int, int]]) -> Markup:
    """The share of each day's photos that the model flagged unknown (among photos with a
    verdict); a day without verdicts (an older model) is left blank."""
    width, height, left, bottom, top = 560, 170, 40, 30, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    rates = {d: f / n for d, (f, n) in per_day.items() if n}
    peak = _nice_ceiling(max(list(rates.values()) + [0.01]))
    body = _y_grid(left, top, plot_w, plot_h, peak, count=False)
    bw = plot_w / max(len(days), 1)
    for i, d in enumerate(days):
        x = left + i * bw
        if _labelled(i, len(days)):
            body.append(_text(x + bw / 2, height - bottom + 14, _day(d), anchor="middle"))
        if d not in rates:
            continue
        flagged, judged = per_day[d]
        h = plot_h * rates[d] / peak
        body.append(_rect(x + 2, top + plot_h - h, bw - 4, h, UNKNOWN_COLOUR,
                          f"{_day(d)}: {rates[d]:.1%} unknown ({flagged:,} of {judged:,} photos)"))
    if not rates:
        body.append(_text(left + plot_w / 2, top + plot_h / 2, "no out-of-distribution verdicts "
                          "yet (the model has no unknown score)", anchor="middle"))
    return _svg(width, height, "Share of photos flagged unknown per day", body)


def agreement(
    days: Sequence[date],
    per_class: Mapping[str, Mapping[date, tuple[int, int]]],
    classes: Sequence[str],
) -> Markup:
    """Per class, the share of the photos moderators labelled each day on which they kept
    the model's label: one line per class, a dot per day with labels."""
    width, height, left, bottom, top = 560, 200, 40, 44, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    body = _y_grid(left, top, plot_w, plot_h, 1.0, count=False)
    step = plot_w / max(len(days) - 1, 1)
    xs = {d: left + i * step for i, d in enumerate(days)}
    for i, d in enumerate(days):
        if _labelled(i, len(days)):
            body.append(_text(xs[d], height - bottom + 14, _day(d), anchor="middle"))
    any_point = False
    for k, c in enumerate(classes):
        points = [(d, *per_class.get(c, {})[d]) for d in days if d in per_class.get(c, {})]
        points = [(d, a, n) for d, a, n in points if n]
        if not points:
            continue
        any_point = True
        coords = [(xs[d], top + plot_h * (1 - a / n)) for d, a, n in points]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour(k)}" stroke-width="2"/>')
        for (x, y), (d, a, n) in zip(coords, points, strict=True):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour(k)}">'
                        f"<title>{escape(f'{c}, {_day(d)}: moderators kept {a} of {n} ({a / n:.0%})')}"
                        "</title></circle>")
    if not any_point:
        body.append(_text(left + plot_w / 2, top + plot_h / 2, "no moderator labels in these days",
                          anchor="middle"))
    x = float(left)
    for k, c in enumerate(classes):
        body.append(f'<rect x="{x:.1f}" y="{height - 14}" width="10" height="10" fill="{colour(k)}"/>')
        body.append(_text(x + 14, height - 5, c, fill=INK))
        x += 24 + 7 * len(c)
    return _svg(width, height, "Moderator agreement with the model per class and day", body)
