"""One matplotlib figure drawn by a callback and returned as a base64 PNG for report.html."""

from __future__ import annotations

from typing import Any, Callable


def axes_png(draw: Callable[[Any], None], *, size: tuple[float, float], xlabel: str, ylabel: str, title: str) -> str:
    """Base64 PNG of one set of axes: `draw(axes)` plots, then labels, grid and title are set."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from edgepack.bundle.report_html import _png

    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.set_title(title)
    data = _png(figure)
    plt.close(figure)
    return data
