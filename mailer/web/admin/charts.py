"""Charts drawn on the server as inline SVG: no script, no CDN, readable offline.

Each chart carries a <title> and <desc> for screen readers; pages show the same numbers as a
table beside it. Colours come from classes in admin.css (the CSP allows no inline styles).
Counts get whole-number ticks. An SVG scales its text with its width, so each chart is drawn
twice, for a wide card and for a phone, and admin.css shows the one that fits: the labels
stay about 11 px either way and the chart fills its card.
"""

from __future__ import annotations

from markupsafe import Markup, escape

_ids = iter(range(1, 1 << 62))


def nice_max(value: float) -> int:
    """A round upper bound for an axis: 1, 2, 5, 10, 20, 50, ..."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def count_ticks(value: float, most: int = 5) -> list[int]:
    """Whole-number axis ticks from 0 past `value`, at most `most` of them, 1-2-5 steps."""
    top = max(int(-(-value // 1)), 1)
    step = 1
    while True:
        for m in (1, 2, 5):
            if -(-top // (step * m)) + 1 <= most:
                step *= m
                return list(range(0, -(-top // step) * step + 1, step))
        step *= 10


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _frame(title: str, desc: str, width: int, height: int, body: list[str],
           size: str = "") -> Markup:
    n = next(_ids)
    head = (
        f'<svg class="chart{" " + size if size else ""}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="chart-t{n} chart-d{n}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-t{n}">{escape(title)}</title><desc id="chart-d{n}">{escape(desc)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")


# Drawing widths: a card on a desktop (about 900 px) and a phone's card (about 340 px).
WIDE, NARROW = 900, 340


def line_chart(title: str, desc: str, labels: list[str],
               series: list[tuple[str, str, list[int]]]) -> Markup:
    """Lines over time, for wide and narrow cards: see line_svg."""
    return Markup("").join([
        line_svg(title, desc, labels, series, width=WIDE, height=260, size="wide"),
        line_svg(title, desc, labels, series, width=NARROW, height=220, size="narrow"),
    ])


def line_svg(title: str, desc: str, labels: list[str],
             series: list[tuple[str, str, list[int]]], width: int = WIDE,
             height: int = 260, size: str = "") -> Markup:
    """Lines over time: labels along the x axis; series are (name, css class, values)."""
    left, right, top, bottom = 44, 12, 30 if width >= 480 else 48, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = count_ticks(max((max(v) for _, _, v in series if v), default=0))
    top_value = ticks[-1]
    count = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / top_value

    body = []
    for v in ticks:
        yy = y(v)
        body.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{yy:.1f}" '
                    f'y2="{yy:.1f}"/>')
        body.append(f'<text class="axis" x="{left - 6}" y="{yy + 4:.1f}" '
                    f'text-anchor="end">{v:,}</text>')
    for i in sorted({0, count // 2, count - 1}):
        if i < len(labels):
            anchor = "start" if i == 0 else "end" if i == count - 1 else "middle"
            body.append(f'<text class="axis" x="{x(i):.1f}" y="{height - 6}" '
                        f'text-anchor="{anchor}">{escape(labels[i])}</text>')
    legend_x, legend_y = left, 8
    for name, css, values in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        body.append(f'<polyline class="line {escape(css)}" points="{points}"/>')
        room = 30 + 8 * len(name)
        if legend_x + room > width:  # a narrow card: the legend takes a second line
            legend_x, legend_y = left, legend_y + 18
        body.append(f'<rect class="swatch {escape(css)}" x="{legend_x}" y="{legend_y}" '
                    f'width="12" height="12" rx="2"/>')
        body.append(f'<text class="legend" x="{legend_x + 17}" y="{legend_y + 10}">'
                    f'{escape(name)}</text>')
        legend_x += room
    return _frame(title, desc, width, height, body, size)


def bar_chart(title: str, desc: str, bars: list[tuple[str, int, str]]) -> Markup:
    """Horizontal bars, for wide and narrow cards: see bar_svg."""
    return Markup("").join([
        bar_svg(title, desc, bars, width=WIDE, size="wide"),
        bar_svg(title, desc, bars, width=NARROW, size="narrow"),
    ])


def bar_svg(title: str, desc: str, bars: list[tuple[str, int, str]], width: int = WIDE,
            bar_height: int = 22, size: str = "") -> Markup:
    """Horizontal bars: (label, value, css class) each, labels cut short (the table has them)."""
    label_w, value_w, gap = (230, 56, 8) if width >= 480 else (120, 44, 8)
    height = max(len(bars), 1) * (bar_height + gap) + gap
    top_value = count_ticks(max((v for _, v, _ in bars), default=0))[-1]
    plot_w = width - label_w - value_w
    body = []
    for i, (label, value, css) in enumerate(bars):
        yy = gap + i * (bar_height + gap)
        w = plot_w * value / top_value
        body.append(f'<text class="axis" x="{label_w - 8}" y="{yy + bar_height * 0.7:.1f}" '
                    f'text-anchor="end">{escape(_short(label, 34 if width >= 480 else 17))}</text>')
        body.append(f'<rect class="bar {escape(css)}" x="{label_w}" y="{yy}" width="{w:.1f}" '
                    f'height="{bar_height}" rx="3"/>')
        body.append(f'<text class="value" x="{label_w + w + 6:.1f}" '
                    f'y="{yy + bar_height * 0.7:.1f}">{value}</text>')
    return _frame(title, desc, width, height, body, size)
