"""Where a failing artifact's error starts (edgepack.evaluation.divergence), in sentences and as a plot."""

from __future__ import annotations

from edgepack.bundle.manifest import Manifest
from edgepack.bundle.plots import axes_png, escape
from edgepack.evaluation.divergence import DivergenceRecord


def divergence_line(record: DivergenceRecord) -> str:
    """One sentence: the first layer whose error jumps, with the errors around it."""
    first = record.first_layer
    if first is None:
        return f"{record.artifact}: {record.note or 'no layer-to-layer rise in error found'}"
    assert record.first is not None
    before = record.layers[record.first - 1].relative_error if record.first else 0.0
    worst = max(record.layers, key=lambda layer: layer.relative_error)
    return (f"{record.artifact}: the error first jumps at module {first.module} (node {first.node}, layer "
            f"{record.first + 1} of {len(record.layers)}): relative error {before:.3g} before it, "
            f"{first.relative_error:.3g} after; largest {worst.relative_error:.3g} at {worst.module}; "
            f"{record.samples} evaluation samples" + (f" ({record.note})" if record.note else ""))


def divergence_png(record: DivergenceRecord) -> str:
    """Base64 PNG: relative error per layer in execution order, the first divergence marked."""
    errors = [layer.relative_error for layer in record.layers]

    def draw(axes) -> None:
        axes.plot(range(1, len(errors) + 1), errors, marker="o", markersize=3)
        if record.first is not None:
            axes.scatter([record.first + 1], [errors[record.first]], s=120, marker="*", color="#b00020", zorder=3,
                         label=f"first jump: {record.layers[record.first].module}")
            axes.legend(fontsize=8, loc="upper left")

    return axes_png(draw, size=(7.5, 3.4), xlabel="compute layer (execution order)",
                    ylabel="relative L2 error vs float", title=f"{record.artifact}: error per layer")


def divergence_html(manifest: Manifest) -> list[str]:
    """The report.html section, empty when no artifact was localized."""
    if not manifest.divergence:
        return []
    parts = ["<h2>Where the error starts</h2>",
             "<p class='note'>Each failing INT8 artifact against the float model it was built from, layer by layer "
             "in its own runtime on a few evaluation samples: relative L2 error of each conv/linear layer's "
             "output.</p>"]
    for record in manifest.divergence.values():
        parts.append(f"<p>{escape(divergence_line(record))}</p>")
        if record.compared:
            parts.append(f"<p class='note'>Compared: {escape(record.compared)}.</p>")
        if record.layers:
            caption = f"Error per layer of {record.artifact}"
            parts.append(f"<figure><img alt='{escape(caption)}' src='data:image/png;base64,{divergence_png(record)}'>"
                         f"<figcaption>{escape(caption)}</figcaption></figure>")
    return parts
