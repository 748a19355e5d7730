"""Charts drawn on the server as SVG pictures: a heat map, grouped bars, a grid of shaded numbers.

Why not Plotly for these: a browser tab's first Plotly chart loads and runs 4.7 MB of chart code,
and the first table of Streamlit's data grid more, so the Dataset and Mean-images pages could not
open within 1.5 s of a click (a fresh browser on a 2-core machine: Dataset 4.2 s with them, 1.9 s
without; Mean images 2.8 s and 1.5 s). These charts are
looked at, not zoomed, so a picture does the job. Shown with `st.image`, an SVG is an <img>: it
runs no script, and every label in it is escaped. The colour scales are Plotly's, so these
pictures match the charts elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

import numpy as np

TEXT = "#1f2430"  # the theme's text colour (.streamlit/config.toml)
FONT = 'font-family="sans-serif"'
# Colour scales as stops from low to high (Plotly's gray, Viridis, Blues and RdBu reversed).
SCALES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "gray": ((0, 0, 0), (255, 255, 255)),
    "viridis": ((68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142),
                (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)),
    "blues": ((247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
              (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107)),
    "blue_red": ((5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (209, 229, 240),
                 (247, 247, 247), (253, 219, 199), (244, 165, 130), (214, 96, 77), (178, 24, 43),
                 (103, 0, 31)),
}


def paint(values: np.ndarray, scale: str, low: float, high: float) -> np.ndarray:
    """RGB colours (uint8, shape + (3,)) of `values` on `scale`, `low` and `high` at its ends."""
    stops = np.asarray(SCALES[scale], dtype=np.float64)
    span = high - low if high > low else 1.0
    where = np.clip((np.asarray(values, dtype=np.float64) - low) / span, 0.0, 1.0) * (len(stops) - 1)
    positions = np.arange(len(stops))
    channels = [np.interp(where, positions, stops[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def ink_for(rgb: Sequence[int]) -> str:
    """Black or white text, whichever reads better on a cell of colour `rgb`."""
    red, green, blue = (int(c) for c in rgb)
    return TEXT if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#ffffff"


def short(value: float) -> str:
    """A scale label: 3 significant digits, no trailing zeros."""
    return f"{value:.3g}"


def svg(width: float, height: float, body: list[str]) -> str:
    """One SVG document on a white card (readable whatever the page's theme)."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" {FONT} font-size="12" fill="{TEXT}">'
            f'<rect width="100%" height="100%" fill="#ffffff"/>{"".join(body)}</svg>')


def cells(colours: np.ndarray, left: float, top: float, width: float, height: float) -> list[str]:
    """One rectangle per cell; crisp edges, so no seams show between neighbours."""
    rows, columns = colours.shape[:2]
    rects = [
        f'<rect x="{left + c * width:g}" y="{top + r * height:g}" width="{width:g}" height="{height:g}" '
        f'fill="{hex_colour(colours[r, c])}"/>'
        for r in range(rows) for c in range(columns)
    ]
    return ['<g shape-rendering="crispEdges">', *rects, "</g>"]


def edge_numbers(count: int) -> list[int]:
    """Which rows (or columns) of a map get their number written: every 7th and the last."""
    return sorted({*range(0, count, 7), count - 1})


def heatmap(values: np.ndarray, title: str, scale: str = "gray", low: float | None = None,
            high: float | None = None, legend: str = "value", cell: int = 10) -> str:
    """A map of a 2-D array (a 28x28 image's worth of numbers), row and column numbers on its
    edges so a pixel can be located, and a colour bar saying what each colour means."""
    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    rows, columns = values.shape
    left, top, bar_gap, bar = 34, 30, 16, 14
    width, height = left + columns * cell + bar_gap + bar + 48, top + rows * cell + 34
    body = [f'<text x="{left}" y="18" font-size="14" font-weight="600">{escape(title)}</text>']
    body += cells(paint(values, scale, low, high), left, top, cell, cell)
    for r in edge_numbers(rows):
        body.append(f'<text x="{left - 4}" y="{top + (r + 0.5) * cell + 4:g}" text-anchor="end" font-size="10">{r}</text>')
    for c in edge_numbers(columns):
        body.append(f'<text x="{left + (c + 0.5) * cell:g}" y="{top + rows * cell + 13}" text-anchor="middle" font-size="10">{c}</text>')
    body.append(f'<text x="{left + columns * cell / 2:g}" y="{top + rows * cell + 28}" text-anchor="middle" font-size="11">column</text>')
    body.append(f'<text x="10" y="{top + rows * cell / 2:g}" text-anchor="middle" font-size="11" '
                f'transform="rotate(-90 10 {top + rows * cell / 2:g})">row</text>')
    # The colour bar: high at the top, as on a thermometer.
    x = left + columns * cell + bar_gap
    stops = SCALES[scale]
    gradient = "".join(f'<stop offset="{i / (len(stops) - 1):.3f}" stop-color="{hex_colour(rgb)}"/>'
                       for i, rgb in enumerate(reversed(stops)))
    body.append(f'<defs><linearGradient id="bar" x1="0" y1="0" x2="0" y2="1">{gradient}</linearGradient></defs>')
    body.append(f'<rect x="{x}" y="{top}" width="{bar}" height="{rows * cell}" fill="url(#bar)" stroke="#c8ccd6"/>')
    for share, value in ((0.0, high), (0.5, (low + high) / 2), (1.0, low)):
        y = top + share * rows * cell
        body.append(f'<text x="{x + bar + 4}" y="{y + 4:g}" font-size="10">{short(value)}</text>')
    body.append(f'<text x="{x}" y="{top + rows * cell + 28}" font-size="11">{escape(legend)}</text>')
    return svg(width, height, body)


def nice_step(top: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks up to `top`."""
    if top <= 0:
        return 1.0
    rough = top / ticks
    power = 10 ** math.floor(math.log10(rough))
    return next(power * m for m in (1, 2, 5, 10) if power * m >= rough)


def grouped_bars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]],
                 label: Callable[[float], str], axis: str, axis_label: Callable[[float], str] = short,
                 width: int = 760, height: int = 300) -> str:
    """Bars side by side per category, one colour per series (name, values, colour), each bar
    labelled with `label(value)`, a legend on top."""
    left, right, top, bottom = 56, 8, 34, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    highest = max((max(values) for _, values, _ in series), default=0.0) or 1.0
    step = nice_step(highest)
    ceiling = step * math.ceil(highest * 1.08 / step)
    body = []
    for i in range(int(round(ceiling / step)) + 1):
        y = top + plot_h - plot_h * i * step / ceiling
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ee"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{escape(axis_label(i * step))}</text>')
    body.append(f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="11" '
                f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(axis)}</text>')
    group = plot_w / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    for k, category in enumerate(categories):
        x0 = left + k * group + group * 0.1
        for s, (_, values, colour) in enumerate(series):
            value = float(values[k])
            h = plot_h * value / ceiling
            x, y = x0 + s * bar, top + plot_h - h
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" fill="{escape(colour)}"/>')
            body.append(f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">{escape(label(value))}</text>')
        body.append(f'<text x="{left + (k + 0.5) * group:.1f}" y="{top + plot_h + 15}" text-anchor="middle" font-size="12">{escape(category)}</text>')
    x = left
    for name, _, colour in series:
        body.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{escape(colour)}"/>')
        body.append(f'<text x="{x + 16}" y="18" font-size="12">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return svg(width, height, body)


def number_grid(texts: np.ndarray, colours: np.ndarray, row_title: str = "", column_title: str = "",
                cell_width: int = 26, cell_height: int = 20, font_size: int = 10) -> str:
    """A table of numbers (`texts`, 2-D) on shaded cells (`colours`, RGB per cell), row and
    column numbers on the left and top, optional axis titles."""
    rows, columns = texts.shape
    left = 26 + (16 if row_title else 0)
    top = 18 + (16 if column_title else 0)
    width, height = left + columns * cell_width + 2, top + rows * cell_height + 2
    body = cells(colours, left, top, cell_width, cell_height)
    for r in range(rows):
        body.append(f'<text x="{left - 5}" y="{top + (r + 0.5) * cell_height + 4:g}" text-anchor="end" font-size="{font_size}">{r}</text>')
    for c in range(columns):
        body.append(f'<text x="{left + (c + 0.5) * cell_width:g}" y="{top - 5}" text-anchor="middle" font-size="{font_size}">{c}</text>')
    if column_title:
        body.append(f'<text x="{left + columns * cell_width / 2:g}" y="12" text-anchor="middle" font-size="11">{escape(column_title)}</text>')
    if row_title:
        middle = top + rows * cell_height / 2
        body.append(f'<text x="10" y="{middle:g}" text-anchor="middle" font-size="11" '
                    f'transform="rotate(-90 10 {middle:g})">{escape(row_title)}</text>')
    for (r, c), text in np.ndenumerate(texts):
        body.append(f'<text x="{left + (c + 0.5) * cell_width:g}" y="{top + (r + 0.5) * cell_height + font_size * 0.35:g}" '
                    f'text-anchor="middle" font-size="{font_size}" fill="{ink_for(colours[r, c])}">{escape(str(text))}</text>')
    return svg(width, height, body)


def pixel_values(image: np.ndarray) -> str:
    """The 784 values of one 28x28 image (0-255), each on its own grey: what the network sees."""
    image = np.asarray(image)
    return number_grid(image.astype(int), paint(image, "gray", 0, 255), "row", "column")


def log_shares(counts: np.ndarray) -> np.ndarray:
    """Counts scaled to [0, 1] on a log scale, so a cell with 5 shows next to one with 1,000."""
    logs = np.log1p(np.asarray(counts, dtype=np.float64))
    return logs / max(float(logs.max()), 1e-9)


def confusion_matrix(confusion: np.ndarray) -> str:
    """Counts per (true digit, predicted digit), shaded blue on a log scale."""
    confusion = np.asarray(confusion)
    texts = np.vectorize(lambda v: f"{int(v):,}")(confusion)
    return number_grid(texts, paint(log_shares(confusion), "blues", 0, 1), "true digit", "predicted digit",
                       cell_width=54, cell_height=30, font_size=12)
