"""Charts of the staff dashboard: drawn on the server by pygal, inlined in the page as SVG.

pygal writes a chart for a browser that runs its JavaScript: a `<script>` holding the chart's
config (always, even with `js=[]`), a `<style>` inside the SVG and a hidden tooltip group with a
`style` attribute. The dashboard's Content-Security-Policy allows no script and no inline style
but the one hashed `<style>` of the page, so `Chart.render` strips the SVG of all three and
hands its CSS back to go into that `<style>`. What stays is static SVG: shapes, text, classes.
The numbers are in a table beside every chart, so nothing is lost without tooltips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pygal
from pygal.etree import etree
from pygal.style import Style

__all__ = ["Chart", "Series", "bar_chart"]

#: Colours of the series, in order (readable on white, distinct for the usual colour blindness).
COLOURS = ("#1f5fbf", "#e08a00", "#2e7d32", "#b00020", "#6a3d9a", "#00838f", "#8d6e63")
_STYLE = Style(
    font_family='system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
    background="transparent",
    plot_background="transparent",
    foreground="rgba(0, 0, 0, .87)",
    foreground_strong="rgba(0, 0, 0, 1)",
    foreground_subtle="rgba(0, 0, 0, .54)",
    colors=COLOURS,
    opacity=".9",
    opacity_hover=".9",
    transition="0s",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=13,
    value_font_size=12,
)


@dataclass(frozen=True, slots=True)
class Series:
    title: str
    values: Sequence[float | None]


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart ready for the page: the `<svg>` element and the CSS it needs."""

    svg: str
    css: str


def bar_chart(
    label: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    stacked: bool = False,
    percent: bool = False,
    line: bool = False,
) -> Chart:
    """Bars (side by side, or `stacked`) or a `line`, one per series, over `x_labels`.
    `label` names the chart for screen readers; `percent` shows 0–100 % on the y axis."""
    config = pygal.Config(
        js=[],  # nothing loaded from outside (and no script runs anyway: see `_static`)
        style=_STYLE,
        width=720,
        height=320,
        show_legend=len(series) > 1,
        legend_at_bottom=True,
        legend_at_bottom_columns=min(len(series), 5) or 1,
        x_label_rotation=0 if len(x_labels) <= 7 else 35,
        truncate_label=-1,
        truncate_legend=-1,
        print_values=False,
        include_x_axis=True,
        margin=12,
        disable_xml_declaration=True,
    )
    if percent:
        config.range = (0, 100)
        config.value_formatter = lambda value: f"{value:.0f} %"
    else:
        config.value_formatter = lambda value: f"{value:g}"
        config.min_scale = 1
    kind = pygal.Line if line else (pygal.StackedBar if stacked else pygal.Bar)
    chart = kind(config)
    chart.x_labels = list(x_labels)
    for one in series:
        chart.add(one.title, list(one.values))
    return _static(chart.render_tree(), label)


def _static(root: object, label: str) -> Chart:
    """The chart without what needs JavaScript or an inline style (see the module doc)."""
    css: list[str] = []
    for parent in list(root.iter()):  # type: ignore[attr-defined]
        for child in list(parent):
            tag = child.tag if isinstance(child.tag, str) else ""  # comments have no name
            name = tag.rsplit("}", 1)[-1]
            if name == "style":
                css.append(child.text or "")
            elif name == "title":  # pygal's default title is its own name
                child.text = label
            if not tag or name in ("script", "style") or "tooltip" in child.get("class", ""):
                parent.remove(child)
    for element in root.iter():  # type: ignore[attr-defined]
        element.attrib.pop("style", None)
    root.set("role", "img")  # type: ignore[attr-defined]
    root.set("aria-label", label)  # type: ignore[attr-defined]
    svg = etree.tostring(root, encoding="unicode")
    text = "\n".join(css)
    if "</" in text:  # it goes into the page's <style>, raw: it must not close it
        raise ValueError("chart CSS cannot be inlined")
    return Chart(svg=svg, css=text)
