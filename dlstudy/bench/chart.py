"""The `dlstudy bench --chart` file: an SVG written by hand (no plotting library), PNG on request.

Two panels side by side, concurrency on the x axis (one tick per level measured), one line per
strategy x HTTP version (colour = strategy; solid = HTTP/1.1, dashed = HTTP/2, dotted = HTTP/3):

    left    throughput in MB/s: median of the repeats, whisker from min to max
    right   time to first byte in ms: p50, whisker up to p90

`study` is measured at concurrency 1 only, so it is a single point. Unsupported cells draw
nothing; their legend entry says why. PNG is the SVG rendered by the first converter found:
`rsvg-convert`, the `cairosvg` module, or ImageMagick (`magick` / `convert`).
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..errors import StorageError, UsageError
from ..store.files import TEMP_SUFFIX
from .report import HTTP_NAMES, BenchReport, Row

CHART_SUFFIXES = (".svg", ".png")
COLOURS = {
    "single-part": "#1f77b4",
    "multipart-instance": "#ff7f0e",
    "series": "#2ca02c",
    "study": "#d62728",
}
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
WIDTH = 1000
PANEL_TOP = 90
PANEL_HEIGHT = 300
PANELS_X = ((80, 400), (580, 400))  # (left, width)
LEGEND_TOP = PANEL_TOP + PANEL_HEIGHT + 70
LEGEND_ROW = 20

Metric = Callable[[Row], tuple[float, float, float] | None]  # (value, whisker low, high)


def _throughput(row: Row) -> tuple[float, float, float] | None:
    spread = row.mb_per_s()
    if spread["median"] is None or spread["min"] is None or spread["max"] is None:
        return None
    return spread["median"], spread["min"], spread["max"]


def _ttfb(row: Row) -> tuple[float, float, float] | None:
    ttfb = row.ttfb_ms()
    if ttfb["p50"] is None or ttfb["p90"] is None:
        return None
    return ttfb["p50"], ttfb["p50"], ttfb["p90"]


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 x 10^k) up to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _number(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value:,.0f}"


def _text(
    x: float, y: float, text: str, *, size: int = 12, anchor: str = "middle", **attrs: str
) -> str:
    extra = "".join(f" {name.replace('_', '-')}={quoteattr(v)}" for name, v in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{escape(text)}</text>"
    )


def render_svg(report: BenchReport) -> str:
    rows = report.rows()
    levels = sorted({row.concurrency for row in rows}) or [1]
    series: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        series.setdefault((row.strategy, row.http), []).append(row)
    legend_rows = len({strategy for strategy, _ in series})
    height = LEGEND_TOP + legend_rows * LEGEND_ROW + 20
    date = report.started.strftime("%Y-%m-%d %H:%M UTC")
    measured = report.instances_measured
    subtitle = (
        f"study {report.study_uid} · "
        + ("? instances" if measured is None else f"{measured} instance{'s' * (measured != 1)}")
        + f" · {_runs(rows, report.repeat)} · {date}"
    )
    if report.error:
        subtitle += f" · stopped: {report.error}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family={quoteattr(FONT)}>',
        f"<title>{escape(f'dlstudy bench: {report.url}')}</title>",
        f"<desc>{escape(subtitle)}</desc>",
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(WIDTH / 2, 30, f"dlstudy bench: {report.url}", size=18, font_weight="bold"),
        _text(WIDTH / 2, 52, subtitle, size=12, fill="#555"),
    ]
    panels: list[tuple[str, Metric]] = [
        ("Throughput, MB/s (median; whisker min to max)", _throughput),
        ("Time to first byte, ms (p50; whisker to p90)", _ttfb),
    ]
    for (left, width), (title, metric) in zip(PANELS_X, panels, strict=True):
        parts += _panel(left, width, title, metric, levels, series)
    parts += _legend(series)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _runs(rows: Sequence[Row], repeat: int) -> str:
    """How many runs the points are over: fewer than asked when the bench was stopped, or
    when a request of a run failed."""
    counts = {len(row.complete) for row in rows if not row.unsupported} or {repeat}
    asked = f"{repeat} run{'s' if repeat != 1 else ''} per cell"
    if counts == {repeat}:
        return asked
    low, high = min(counts), max(counts)
    return f"{low if low == high else f'{low}-{high}'} of {asked}"


def _panel(
    left: float,
    width: float,
    title: str,
    metric: Metric,
    levels: Sequence[int],
    series: dict[tuple[str, str], list[Row]],
) -> list[str]:
    bottom = PANEL_TOP + PANEL_HEIGHT
    values = [v for rows in series.values() for row in rows if (v := metric(row)) is not None]
    ticks = nice_ticks(max((high for _, _, high in values), default=0.0))
    top_value = ticks[-1]

    def y_of(value: float) -> float:
        return bottom - value / top_value * PANEL_HEIGHT

    slot = width / len(levels)

    def x_of(level: int, offset: float) -> float:
        return left + slot * (levels.index(level) + 0.5) + offset

    out = [
        '<g class="panel">',
        _text(left + width / 2, PANEL_TOP - 14, title, size=13, font_weight="bold"),
    ]
    for tick in ticks:
        y = y_of(tick)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(_text(left - 6, y + 4, _number(tick), size=11, anchor="end"))
    out.append(
        f'<polyline points="{left},{PANEL_TOP} {left},{bottom} {left + width},{bottom}" '
        f'fill="none" stroke="#333"/>'
    )
    for level in levels:
        out.append(_text(x_of(level, 0), bottom + 18, str(level), size=11))
    out.append(_text(left + width / 2, bottom + 38, "concurrency (requests in flight)", size=12))
    count = len(series)
    for index, ((strategy, http), rows) in enumerate(series.items()):
        offset = (index - (count - 1) / 2) * min(6.0, slot / (count + 1))
        colour = COLOURS.get(strategy, "#555")
        dash = _DASHES.get(http, "")
        points = [
            (x_of(row.concurrency, offset), measured)
            for row in rows
            if (measured := metric(row)) is not None
        ]
        out.append(
            f'<g class="series" data-strategy={quoteattr(strategy)} data-http={quoteattr(http)}>'
        )
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y_of(v[0]):.1f}" for x, v in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
            )
        for x, (value, low, high) in points:
            out.append(
                f'<line x1="{x:.1f}" y1="{y_of(low):.1f}" x2="{x:.1f}" y2="{y_of(high):.1f}" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
            out.append(_marker(x, y_of(value), colour, http))
        out.append("</g>")
    out.append("</g>")
    return out


# The line of each HTTP version (HTTP/1.1 solid) and its marker (a dot; HTTP/2 a square; HTTP/3 a
# diamond).
_DASHES = {"2": ' stroke-dasharray="6 4"', "3": ' stroke-dasharray="2 3"'}


def _marker(x: float, y: float, colour: str, http: str) -> str:
    if http == "3":
        return (
            f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="white" '
            f'stroke="{colour}" stroke-width="2" transform="rotate(45 {x:.1f} {y:.1f})"/>'
        )
    if http == "2":
        return (
            f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="white" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>'


def _legend(series: dict[tuple[str, str], list[Row]]) -> list[str]:
    """One line per strategy, one column per HTTP version."""
    strategies = list(dict.fromkeys(strategy for strategy, _ in series))
    versions = list(dict.fromkeys(http for _, http in series))
    out = ['<g class="legend">']
    for (strategy, http), rows in series.items():
        x = PANELS_X[0][0] + versions.index(http) * (920 // len(versions))
        y = LEGEND_TOP + strategies.index(strategy) * LEGEND_ROW
        colour = COLOURS.get(strategy, "#555")
        dash = _DASHES.get(http, "")
        label = f"{strategy} · {HTTP_NAMES.get(http, 'HTTP/1.1')}"
        unsupported = next((row.unsupported for row in rows if row.unsupported), None)
        failures = sum(row.failures for row in rows)
        if unsupported:
            label += f": {unsupported}"
        elif failures:  # the points are over what arrived: say how much did not
            asked = sum(run.asked for row in rows for run in row.runs)
            label += f": {failures} of {asked} failed"
        out.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 30}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(_marker(x + 15, y - 4, colour, http))
        fill = "#999" if unsupported else "#222"
        out.append(_text(x + 40, y, label[:90], size=12, anchor="start", fill=fill))
    out.append("</g>")
    return out


_TINY_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
    '<rect width="4" height="4"/></svg>'
)
_converter: list[str | None] = []  # memo of png_converter(): [] = not looked for yet


def png_converter() -> str | None:
    """The first SVG-to-PNG converter that really renders a tiny SVG, or None (memoised).

    Tried, not just found: a `convert` on the PATH may be a stand-in without SVG support.
    """
    if not _converter:
        _converter.append(next((name for name in _CONVERTERS if _works(name)), None))
    return _converter[0]


_CONVERTERS = ("rsvg-convert", "cairosvg", "magick", "convert")


def _works(name: str) -> bool:
    if name != "cairosvg" and shutil.which(name) is None:
        return False
    if name == "cairosvg":
        try:
            importlib.import_module("cairosvg")
        except (ImportError, OSError):  # OSError: the module is there, libcairo is not
            return False
    with tempfile.TemporaryDirectory(prefix="dlstudy-chart-") as folder:
        source, target = Path(folder) / "probe.svg", Path(folder) / "probe.png"
        source.write_text(_TINY_SVG, encoding="utf-8")
        try:
            _render(name, source, target)
        except (OSError, subprocess.SubprocessError, StorageError):
            return False
        return target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_chart_path(path: Path) -> None:
    """Raise UsageError, before any measuring, if the chart could not be written."""
    suffix = path.suffix.lower()
    if suffix not in CHART_SUFFIXES:
        raise UsageError(f"--chart must end with .svg or .png, got {str(path)!r}")
    if suffix == ".png" and png_converter() is None:
        raise UsageError(
            "--chart .png needs rsvg-convert (librsvg), the cairosvg module or ImageMagick; "
            "none was found: install one, or write .svg"
        )
    if not path.parent.is_dir():
        raise UsageError(f"--chart: folder {str(path.parent)!r} does not exist")
    if path.is_dir():  # found now, not after the whole matrix ran
        raise UsageError(f"--chart: {str(path)!r} is a folder")


def write_chart(report: BenchReport, path: Path) -> None:
    """Write the chart whole under `path` or not at all: a temp file beside it, then a rename
    (a full disk or a signal must not leave half an image where the last one was)."""
    svg = render_svg(report).encode("utf-8")
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        if path.suffix.lower() == ".svg":
            image = svg
        else:
            with tempfile.TemporaryDirectory(prefix="dlstudy-chart-") as folder:
                source, target = Path(folder) / "chart.svg", Path(folder) / "chart.png"
                source.write_bytes(svg)
                _to_png(source, target)
                image = target.read_bytes()
        with temp.open("xb") as file:  # O_EXCL: never through a link
            file.write(image)
        os.replace(temp, path)
    except OSError as exc:
        raise StorageError(
            f"cannot write --chart {str(path)!r}: {exc.strerror or exc}", path=str(path)
        ) from exc
    finally:
        temp.unlink(missing_ok=True)  # a failure, or Ctrl-C while writing: nothing left


def _to_png(source: Path, target: Path) -> None:
    converter = png_converter()
    if converter is None:
        raise UsageError("no SVG-to-PNG converter found (rsvg-convert, cairosvg, ImageMagick)")
    _render(converter, source, target)


def _render(converter: str, source: Path, target: Path) -> None:
    if converter == "cairosvg":
        cairosvg = importlib.import_module("cairosvg")
        cairosvg.svg2png(url=str(source), write_to=str(target))
        return
    if converter == "rsvg-convert":
        command = ["rsvg-convert", "--format", "png", "--output", str(target), str(source)]
    else:
        command = [converter, "-density", "96", str(source), str(target)]
    done = subprocess.run(command, capture_output=True, check=False, timeout=120)
    if done.returncode != 0 or not target.exists():
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise StorageError(
            f"{converter} could not render the chart: {detail[-1] if detail else done.returncode}",
            path=str(target),
        )
