"""report.md: the manifest's measurements for people."""

from __future__ import annotations

from edgepack.bundle.entries import Latency, batch_of
from edgepack.bundle.manifest import ArtifactEntry, BenchFigures, Manifest, PruningSection
from edgepack.bundle.report_divergence import divergence_line
from edgepack.bundle.report_tuning import tuning_markdown
from edgepack.evaluation import tasks
from edgepack.registry import get_target, target_table
from edgepack.targets.base import Summary, basic_summary

UNCHECKED = "budget: none — drift was measured and reported, not checked against any bound"


def _mb(size: int) -> str:
    return f"{size / 1e6:.3f} MB"


def _latency(latency: Latency) -> str:
    return " / ".join(f"{value.median_ms:.2f} ms (b{batch_of(key)})" for key, value in latency.items())


def render_markdown(manifest: Manifest) -> str:
    """A readable summary: verdict, float baseline, one row per artifact, failed checks, provenance."""
    source = manifest.source_model
    verdict = "PASSED" if manifest.passed else "FAILED"
    if manifest.budget_disabled:
        verdict += f" ({UNCHECKED})"
    drift_columns = tasks.manifest_columns(manifest)
    lines = [f"# edgepack bundle: {manifest.name}", "",
             f"**{verdict}** — task `{manifest.task}`, created {manifest.created_utc}", "",
             "## Float model", "",
             f"- source: {source.description}",
             "- quality on held-out data: " + ", ".join(f"{k} {v:.4f}" for k, v in source.metrics.items()
                                                        if k != "samples" and isinstance(v, float))
             + f" ({source.metrics['samples']} samples)"]
    if source.params is not None:
        lines.append(f"- parameters: {source.params:,}; MACs per sample: {source.macs:,}")
    if manifest.pruning is not None:
        lines += ["", *_pruning_lines(manifest.pruning), ""]
    lines += [f"- latency ({source.runtime}): {_latency(source.latency)}",
              f"- fp32 ONNX reference: {_mb(manifest.reference.size_bytes)}, "
              f"latency {_latency(source.reference_onnx_latency)}",
              "", "## Artifacts", "",
              "| target | artifact | size | vs fp32 ONNX | " + " | ".join(c[0] for c in drift_columns)
              + " | latency | verdict |",
              "|---|---|---|---|" + "---|" * len(drift_columns) + "---|---|"]
    failures = []
    for name, target in manifest.targets.items():
        if target.status == "error":
            lines.append(f"| {name} | — | — | — | " + "— | " * len(drift_columns) + "— | ERROR |")
            failures.append(f"- `{name}`: error: {target.error}")
            continue
        for item in target.artifacts:
            lines.append(
                f"| {name} | `{item.path}` | {_mb(item.size_bytes)} | {item.size_ratio_vs_fp32_onnx:.2f}x | "
                + "".join(f"{tasks.cell(item.metrics, key, spec)} | " for _, key, spec in drift_columns)
                + f"{_latency(item.latency)} | {'pass' if item.passed else 'FAIL'} |")
            failures += [f"- `{name}` `{item.path}`: {check.metric} {check.value:.4g} outside "
                         f"{check.bound} {check.limit:g}" for check in item.drift if not check.passed]
    lines += [f"\nNote: {note}." for note in manifest.validation_notes()]
    lines += _validation_lines(manifest)
    lines += [f"\n**Warning:** {line}" for line in speed_flag_lines(manifest)]
    lines += _compression_lines(manifest)
    if manifest.divergence:
        lines += ["", "## Where the error starts", "", *[f"- {divergence_line(record)}"
                                                         for record in manifest.divergence.values()]]
    lines += tuning_markdown(manifest)
    lines += _table_lines(manifest)
    if failures:
        lines += ["", "## Failures", "", *failures]
    if manifest.bench is not None:
        lines += ["", *_bench_lines(manifest.bench)]
    settings = manifest.latency_settings
    calibration = manifest.calibration
    lines += ["", "## How this was measured", "",
              f"- drift: every artifact against the float model on {manifest.evaluation.samples} held-out "
              f"samples ({manifest.evaluation.source})",
              f"- calibration: {calibration.method.name} on {calibration.samples_used} samples "
              f"(batch {calibration.batch_size}, seed {calibration.seed})",
              f"- latency: median of {settings.repeats} runs after {settings.warmup} warm-up, "
              f"{settings.threads} threads, {settings.machine.processor} "
              f"({settings.machine.cpu_count} cores)",
              "- toolchain: " + ", ".join(f"{k} {v}" for k, v in manifest.toolchain.items())]
    checks = trust_lines(manifest)
    if checks:
        lines += ["", "## Checks beyond drift", "", *[f"- {line}" for line in checks]]
    if manifest.warnings:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in manifest.warnings]]
    return "\n".join(lines) + "\n"


def trust_lines(manifest: Manifest) -> list[str]:
    """Sentences on what the bundle offers beyond drift: activation coverage and the device check."""
    lines = []
    coverage = manifest.activation_coverage
    if coverage is not None:
        lines.append(f"activation coverage: {coverage.share_outside:.3%} of the float model's evaluation activations "
                     f"({coverage.layers} layers, {coverage.samples} samples) fall outside the ranges seen on "
                     f"calibration data; worst layer '{coverage.worst_layer}' {coverage.worst_share:.2%}")
    if manifest.device_script is not None:
        golden = sum(1 for _, item in manifest.artifacts() if item.golden)
        lines.append(f"on a device: `python {manifest.device_script.path} BUNDLE` needs only numpy and the artifact's "
                     f"runtime; it checks {golden} artifact(s) on their golden samples (STEM.golden.npz) and "
                     "`edgepack verify BUNDLE --device-report FILE` reads its --json back")
    return lines


def summarize(target_name: str, artifact: ArtifactEntry) -> Summary:
    """The artifact's compression facts as its own target states them (format and I/O only when the
    target is not installed here)."""
    if target_name not in target_table():
        return basic_summary(artifact)
    return get_target(target_name).summarize(artifact)


SUMMARY_HEADERS = ["target", "artifact", "fact", "value"]


def summary_rows(manifest: Manifest) -> list[list[str]]:
    """One row per fact per artifact (target and artifact named on the first row of each artifact)."""
    rows = []
    for name, item in manifest.artifacts():
        for index, (label, value) in enumerate(summarize(name, item)):
            rows.append([name if index == 0 else "", item.path if index == 0 else "", label, value])
    return rows


def _compression_lines(manifest: Manifest) -> list[str]:
    rows = summary_rows(manifest)
    if not rows:
        return []
    return ["", "## Compression", "", *_markdown_table(SUMMARY_HEADERS, rows)]


def embedding_table_rows(manifest: Manifest) -> list[list[str]]:
    """One row per quantized embedding table per artifact: artifact, table, shape, bits, scales,
    lookups, bytes before -> after, measured max error against its bound."""
    return [[item.path, table.table, f"{table.rows} x {table.dim}", f"{table.bits}-bit", table.scales,
             str(table.lookups),
             f"{table.bytes_before:,} → {table.bytes_after:,} ({table.bytes_after / table.bytes_before:.3f})",
             f"{table.max_abs_error:.2e} ≤ {table.error_bound:.2e}"]
            for _, item in manifest.artifacts() for table in item.embedding_tables]


EMBEDDING_HEADERS = ["artifact", "table", "rows x dim", "bits", "scales", "lookups", "bytes before → after",
                     "max error ≤ bound"]


def _table_lines(manifest: Manifest) -> list[str]:
    rows = embedding_table_rows(manifest)
    if not rows:
        return []
    return ["", "## Embedding tables", "", *_markdown_table(EMBEDDING_HEADERS, rows)]


def _markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Header, separator and one line per row of a Markdown table."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(row) + " |" for row in rows]]


def _validation_lines(manifest: Manifest) -> list[str]:
    rows = validation_rows(manifest)
    if not rows:
        return []
    isa = [f"- {line}" for line in isa_lines(manifest)]
    return ["", "## Where and how each artifact was validated", "", *_markdown_table(VALIDATION_HEADERS, rows),
            *(["", *isa] if isa else [])]


def _bench_lines(bench: BenchFigures) -> list[str]:
    settings = bench.settings
    large = f"batch_{settings.batch_size}"
    lines = ["## Benchmark", "",
             f"Each entry timed in a fresh process: median of {settings.repeats} runs after {settings.warmup} "
             f"warm-up, {settings.threads} threads. Ratios are against PyTorch eager fp32 from the same run.", "",
             f"| entry | runs on | size | ms b1 | ms b{settings.batch_size} | speed-up b{settings.batch_size} "
             f"| vs ORT fp32 b{settings.batch_size} | peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for row in bench.rows:
        size = _mb(row.size_bytes) if row.size_bytes else "—"
        speedup = f"{row.speedup_vs_eager[large]:.2f}x" if row.speedup_vs_eager is not None else "—"
        versus_onnx = f"{row.speedup_vs_onnx_fp32[large]:.2f}x" if row.speedup_vs_onnx_fp32 is not None else "—"
        memory = f"{row.peak_rss_mb:.0f} MB" if row.peak_rss_mb is not None else "—"
        lines.append(f"| {row.name} | {row.device} | {size} | {row.latency['batch_1'].median_ms:.3f} | "
                     f"{row.latency[large].median_ms:.2f} | {speedup} | {versus_onnx} | {memory} |")
    return lines


def _pruning_lines(pruning: PruningSection) -> list[str]:
    lines = ["## Pruning and distillation", "", f"{pruning.summary}.", "",
             "| measure | before | after |", "|---|---|---|"]
    for label, counts in (("parameters", pruning.params), ("MACs per sample", pruning.macs),
                          ("fp32 size (bytes)", pruning.size_bytes)):
        lines.append(f"| {label} | {counts.before:,} | {counts.after:,} |")
    for runtime, figures in pruning.latency.items():
        lines.append(f"| latency {runtime} | {_latency(figures.before)} | {_latency(figures.after)} |")
    lines += ["", "Layer widths: " + ", ".join(f"`{name}` {w.before}→{w.after}" for name, w in pruning.layers.items())]
    lines += [f"- low-rank: `{layer.layer}` {layer.in_features}→{layer.out} "
              + (f"factorized at rank {layer.rank} ({layer.energy:.0%} energy), params "
                 f"{layer.params_before:,}→{layer.params_after:,}" if layer.factorized
                 else f"kept (rank {layer.rank} would not save parameters)")
              for layer in pruning.lowrank]
    lines += [f"- {note}" for note in pruning.notes]
    if pruning.distillation is not None:
        report = pruning.distillation
        lines.append(f"- distillation: {report.epochs_run} epochs, best {report.best_epoch}, {report.stopped}")
    return lines


VALIDATION_HEADERS = ["artifact", "validated on", "runtime", "provider", "arithmetic"]


def validation_rows(manifest: Manifest) -> list[list[str]]:
    """Per artifact: where its drift was measured (CPU and ISA), runtime, provider, and what computed it."""
    rows = []
    for _, item in manifest.artifacts():
        where = item.validated_on
        rows.append([item.path, f"{where.cpu} ({where.machine}; {' '.join(where.isa) or 'no tracked ISA'})",
                     f"{where.runtime} {where.runtime_version}", where.execution_provider, where.arithmetic])
    return rows


def isa_lines(manifest: Manifest) -> list[str]:
    """Per x86 artifact: the `isa` option, the weights it chose and why, and the saturation proof."""
    lines = []
    for _, item in manifest.artifacts():
        isa = item.isa
        if isa is None:
            continue
        needs = f"; needs one of {', '.join(isa.requires_isa)}" if isa.requires_isa else ""
        lines.append(f"{item.path}: isa {isa.option}, {isa.description}{needs}. Why: {isa.reason}. "
                     f"Saturation: {isa.saturation.proof}.")
        at_risk = isa.saturation.data_check_outputs_at_risk
        if at_risk:
            lines.append(f"{item.path}: on calibration data, {at_risk} output values have a product pair beyond "
                         "int16: a CPU without VNNI would compute them wrongly.")
    return lines


def speed_flag_lines(manifest: Manifest) -> list[str]:
    """Artifacts for this host that ran slower than the fp32 ONNX, with the measured reason."""
    lines = []
    for _, item in manifest.artifacts():
        flag = item.slower_than_fp32
        if flag is not None:
            lines.append(f"{item.path} is SLOWER than the fp32 ONNX at batch {', '.join(map(str, flag.batches))} "
                         f"({flag.artifact_ms:.3f} vs {flag.fp32_onnx_ms:.3f} ms at batch {flag.batch}): "
                         f"{flag.reason}")
    return lines
