"""Terminal rendering with rich: step progress while packing, result tables afterwards."""

from __future__ import annotations

import contextlib
import time
from typing import IO, TYPE_CHECKING, Iterator, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgepack.bundle.manifest import BenchFigures, Manifest, PruningSection
from edgepack.bundle.report_divergence import divergence_line
from edgepack.bundle.report_md import UNCHECKED, isa_lines, speed_flag_lines, validation_rows
from edgepack.bundle.sections import BenchRow, BenchSettingsEntry
from edgepack.device.report import summarize as device_summary
from edgepack.evaluation import tasks

if TYPE_CHECKING:
    from edgepack.bundle.check import BundleCheck
    from edgepack.pipeline import PackResult
    from edgepack.targets.catalog import TargetInfo
    from edgepack.tuning.record import TuningRecord

IN_PROCESS = "measured in the pack process"
# Lines are never wrapped when output goes to a file or CI log (soft_wrap), so they stay greppable;
# tables are wide, so they get a wide page there.
console = Console(stderr=True, soft_wrap=not Console(stderr=True).is_terminal)
out = Console(width=None if Console().is_terminal else 200, soft_wrap=not Console().is_terminal)


def bind(out_stream: Optional[IO[str]], err_stream: Optional[IO[str]]) -> None:
    """Point the terminal's two consoles at these streams (None: the current sys.stdout/sys.stderr)."""
    out.file = out_stream  # type: ignore[assignment]  # None: rich falls back to the current sys.stdout
    console.file = err_stream  # type: ignore[assignment]  # and sys.stderr


class TerminalProgress:
    """A spinner per long step, then a tick with its duration."""

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show `description` with a spinner while the step runs."""
        started = time.perf_counter()
        with console.status(description):
            yield
        console.print(f"[green]✓[/] {description} [dim]({time.perf_counter() - started:.1f} s)[/]")

    def warn(self, message: str) -> None:
        """Print a warning line."""
        console.print(f"[yellow]warning:[/] {message}")


def _in_process_figures(manifest: Manifest) -> BenchFigures:
    """The latency measured during `pack` (same process), shaped like `edgepack bench` figures."""
    from edgepack.benchmark.bench import EAGER, ONNX_FP32, add_ratios

    source = manifest.source_model
    settings = manifest.latency_settings
    rows = [BenchRow(name=ONNX_FP32, size_bytes=manifest.reference.size_bytes, latency=source.reference_onnx_latency,
                     device=source.reference_onnx_latency["batch_1"].device or "")]
    if source.runtime == "torch eager fp32":
        rows.insert(0, BenchRow(name=EAGER, size_bytes=source.size_bytes, latency=source.latency,
                                device=source.latency["batch_1"].device or ""))
    rows += [BenchRow(name=item.path, size_bytes=item.size_bytes, latency=item.latency,
                      device=item.latency["batch_1"].device or "") for _, item in manifest.artifacts()]
    add_ratios(rows, eager=rows[0] if rows[0].name == EAGER else None)
    return BenchFigures(settings=BenchSettingsEntry(batch_size=settings.batch_size, warmup=settings.warmup,
                                                    repeats=settings.repeats, threads=settings.threads,
                                                    data="evaluation data", isolation=IN_PROCESS),
                        rows=rows)


def render_pack(result: PackResult) -> None:
    """Summary table of every artifact, then the verdict and which target/metric failed."""
    manifest = result.manifest
    source = manifest.source_model
    large = f"batch_{manifest.latency_settings.batch_size}"
    table = Table(title=f"edgepack: {manifest.name} → {result.bundle}")
    drift_columns = tasks.manifest_columns(manifest)
    for column in ("target", "artifact", "size MB", "vs fp32 ONNX", *(c[0] for c in drift_columns), "verdict"):
        table.add_column(column, justify="left" if column in ("target", "artifact", "verdict") else "right")
    quality_row = [tasks.cell(source.metrics, key, spec) if key in source.metrics else "—"
                   for _, key, spec in drift_columns]
    table.add_row("float", source.runtime, f"{(source.size_bytes or 0) / 1e6:.3f}", "—", *quality_row, "")
    for name, target in manifest.targets.items():
        if target.status == "error":
            table.add_row(name, "—", "", "", *([""] * len(drift_columns)), "[red]ERROR[/]")
        for item in target.artifacts:
            table.add_row(name, item.path, f"{item.size_bytes / 1e6:.3f}", f"{item.size_ratio_vs_fp32_onnx:.2f}x",
                          *(tasks.cell(item.metrics, key, spec) for _, key, spec in drift_columns),
                          "[green]pass[/]" if item.passed else "[red]FAIL[/]")
    out.print(table)
    out.print(f"drift: against the float model on {manifest.evaluation.samples} held-out samples"
              + tasks.kind(manifest.task).drop_note)
    for note in manifest.validation_notes():
        out.print(f"note: {note}")
    render_validation(manifest)
    if manifest.pruning is not None:
        render_pruning(manifest.pruning, large=large)
    if manifest.targets:
        render_bench(manifest.bench if manifest.bench is not None else _in_process_figures(manifest))
    for name, target in manifest.targets.items():
        if target.status == "error":
            console.print(f"[red]target {name} failed:[/] {target.error}")
        for item in target.artifacts:
            for check in item.drift:
                if not check.passed:
                    console.print(f"[red]drift over budget:[/] target {name} ({item.path}): {check.metric} "
                                  f"{check.value:.4g}, budget {check.bound} {check.limit:g}")
    for record in manifest.divergence.values():
        console.print(f"[red]where it diverges:[/] {escape(divergence_line(record))}")
    if not manifest.targets:
        out.print(f"[green]pruned model written[/]; bundle: {result.bundle}")
        return
    for line in speed_flag_lines(manifest):
        console.print(f"[yellow]warning:[/] {escape(line)}")
    if manifest.budget_disabled:
        console.print(f"[yellow]warning:[/] {UNCHECKED}")
    if manifest.device_script is not None:
        out.print(f"on a device: python {manifest.device_script.path} BUNDLE (numpy + the artifact's runtime) checks "
                  "each artifact on its golden samples")
    if result.signed_by is not None:
        out.print(f"signed: manifest.json, ed25519 key {result.signed_by[:16]} (verify with --key PUBLIC.pem)")
    verdict = "[green]all targets passed[/]" if manifest.passed else "[red]FAILED[/]"
    out.print(f"{verdict}; bundle: {result.bundle}")


def render_validation(manifest: Manifest) -> None:
    """Where each artifact was validated (CPU, ISA, runtime, provider) and what computed its result."""
    rows = validation_rows(manifest)
    hosts = sorted({row[1] for row in rows})
    for host in hosts:
        out.print(f"validated on {host}:", markup=False)
        for row in rows:
            if row[1] == host:
                out.print(f"  {row[0]}: {row[2]}, {row[3]}; {row[4]}", markup=False)
    for line in isa_lines(manifest):
        out.print(f"x86 isa: {line}", markup=False)


def render_bundle_check(check: BundleCheck) -> None:
    """One line per artifact with its absolute metrics, re-measured drift and verdict; warnings first,
    then what the manifest itself recorded."""
    for warning in check.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for path, report in check.reports.items():
        status = "[green]pass[/]" if report.passed else "[red]FAIL[/]"
        details = ", ".join(c.describe() for c in report.checks) or "no bound checked"
        out.print(f"{status} {escape(path)}: {_absolute(report.metrics)}; {details}")
    for failure in check.recorded_failures:
        console.print(f"[red]recorded verdict FAILED:[/] {escape(failure)} (the manifest says so at packing time)")
    if check.device is not None:
        for line in device_summary(check.device):
            out.print(escape(line))
    if check.signature is not None:
        out.print(escape(check.signature.line()))
    same = "; on the packing data, every recorded metric was reproduced" if check.same_data else ""
    measured = (f"drift re-measured on {check.samples} samples{same}" if check.reports
                else "no --data: drift not re-measured here")
    out.print(f"checksums ok, no unlisted files; {measured}")


def _absolute(metrics: dict[str, float]) -> str:
    """Float and artifact quality side by side (accuracy or AUC), for a verdict that shows what it judges."""
    for name in ("accuracy", "auc"):
        if f"reference_{name}" in metrics and name in metrics:
            return f"{name} {metrics[f'reference_{name}']:.4f} (float) → {metrics[name]:.4f}"
    return f"top-1 agreement {metrics['top1_agreement']:.4f}" if "top1_agreement" in metrics else "—"


def render_bench(figures: BenchFigures) -> None:
    """The benchmark table: latency, memory, size and ratios against PyTorch eager from the same run."""
    settings = figures.settings
    large = f"batch_{settings.batch_size}"
    where = "in the pack process" if settings.isolation == IN_PROCESS else "each entry in a fresh process"
    table = Table(title=f"latency ({where})")
    for column in ("entry", "runs on", "size MB", "ms b1", f"ms b{settings.batch_size}", "speed-up b1",
                   f"speed-up b{settings.batch_size}", f"vs ORT fp32 b{settings.batch_size}", "size vs eager",
                   "peak RSS MB"):
        table.add_column(column, justify="left" if column in ("entry", "runs on") else "right")
    for row in figures.rows:
        speedup = row.speedup_vs_eager
        versus_onnx = row.speedup_vs_onnx_fp32
        table.add_row(row.name, row.device, f"{row.size_bytes / 1e6:.3f}" if row.size_bytes else "—",
                      f"{row.latency['batch_1'].median_ms:.3f}", f"{row.latency[large].median_ms:.2f}",
                      f"{speedup['batch_1']:.2f}x" if speedup else "—", f"{speedup[large]:.2f}x" if speedup else "—",
                      f"{versus_onnx[large]:.2f}x" if versus_onnx else "—",
                      f"{row.size_vs_eager:.2f}x" if row.size_vs_eager is not None else "—",
                      f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb is not None else "—")
    out.print(table)
    out.print(f"median of {settings.repeats} runs after {settings.warmup} warm-up, "
              f"{settings.threads} threads, {settings.isolation}; data: {settings.data}. "
              "Latency on CPUExecutionProvider is CPU latency, never GPU latency.")


def render_pruning(pruning: PruningSection, *, large: str) -> None:
    """Before/after of pruning and distillation: size, MACs, latency, accuracy, and per-layer widths."""
    table = Table(title="pruning")
    for column in ("measure", "before", "after", "after / before"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for label, counts in (("parameters", pruning.params), ("MACs per sample", pruning.macs),
                          ("fp32 size bytes", pruning.size_bytes)):
        table.add_row(label, f"{counts.before:,}", f"{counts.after:,}", f"{counts.after / counts.before:.2f}")
    for runtime, figures in pruning.latency.items():
        before, after = figures.before[large].median_ms, figures.after[large].median_ms
        table.add_row(f"{runtime} ms, {large.replace('_', ' ')}", f"{before:.2f}", f"{after:.2f}",
                      f"{after / before:.2f} ({before / after:.2f}x faster)")
    out.print(table)
    out.print(f"{pruning.quality_metric} on held-out data: "
              + " → ".join(f"{k} {v:.4f}" for k, v in pruning.accuracy.items()))
    out.print("layer widths: " + ", ".join(f"{name} {w.before}→{w.after}" for name, w in pruning.layers.items()))
    checked = sum(1 for check in pruning.self_check if check.checked)
    out.print(f"self-check: {checked} of {len(pruning.self_check)} layer groups verified exact "
              f"(max relative difference "
              f"{max((check.max_relative_difference for check in pruning.self_check), default=0):.1e})")
    for layer in pruning.lowrank:
        verdict = f"rank {layer.rank}" if layer.factorized else f"kept (rank {layer.rank} would not save)"
        out.print(f"low-rank: {layer.layer} {layer.in_features}→{layer.out}: {verdict}, "
                  f"params {layer.params_before:,}→{layer.params_after if layer.factorized else layer.params_before:,}")
    for note in pruning.notes:
        out.print(f"note: {note}")
    if pruning.distillation is not None:
        report = pruning.distillation
        out.print(f"distillation: {report.epochs_run} epochs in {report.seconds:.1f} s, kept epoch "
                  f"{report.best_epoch} ({report.selected_by}; validation {report.validation_metric} "
                  f"{report.best_validation:.4f}); {report.stopped}")


def render_targets(found: list[TargetInfo]) -> None:
    """One block per target: description, packages with versions or the pip command, methods, options."""
    for info in found:
        state = "[green]installed[/]" if info.installed else f"[yellow]not installed[/]: {escape(info.install_command)}"
        out.print(f"[bold]{escape(info.name)}[/]  {escape(info.description)}")
        packages = ", ".join(f"{module} {version}" if version else f"{module} (missing)"
                             for module, version in info.packages.items())
        out.print(f"  {state}; needs {escape(packages)}")
        out.print(f"  calibration methods: {', '.join(info.calibration_methods)}")
        for option in info.options:
            described = f": {escape(option.description)}" if option.description else ""
            out.print(f"  option {option.name} (default {option.default!r}){described}")


def render_tuning(records: dict[str, TuningRecord]) -> None:
    """Per target: every trial in the order tried (agreement, latency, size), the choice, the sensitive layers."""
    for name, record in records.items():
        table = Table(title=f"tune {name}: {record.fit_samples} calibration samples fit, {record.holdout_samples} "
                            "held out to score")
        for column in ("#", "candidate", "top-1 agree", "rel. L2", "ms", "size MB", "s", "verdict"):
            table.add_column(column, justify="left" if column in ("candidate", "verdict") else "right")
        for index, trial in enumerate(record.trials):
            metrics = trial.metrics
            verdict = ("[red]error[/]" if trial.error else "[green]meets budget[/]" if trial.passed else "over budget")
            if index == record.chosen:
                verdict += " [bold]← chosen[/]"
            table.add_row(str(index), escape(trial.label),
                          f"{metrics['top1_agreement']:.4f}" if "top1_agreement" in metrics else "—",
                          f"{metrics['relative_l2']:.3g}" if "relative_l2" in metrics else "—",
                          f"{trial.latency_ms:.1f}" if trial.latency_ms is not None else "—",
                          f"{trial.size_bytes / 1e6:.3f}" if trial.size_bytes else "—", f"{trial.seconds:.0f}",
                          verdict)
        out.print(table)
        for trial in record.trials:
            if trial.error:
                console.print(f"[red]{escape(trial.label)} could not be built:[/] {escape(trial.error)}")
        out.print(f"{name}: {escape(record.reason)}")
        if record.bounds_not_checked:
            out.print(f"{name}: not checked while tuning (needs labels in the calibration data): "
                      f"{', '.join(record.bounds_not_checked)}; pack checks them on the evaluation data")
        top = record.sensitivity[:5]
        if top:
            listed = "; ".join(f"{item.module} ({item.alone:.3g}"
                               + (f", {', '.join(names[:2])}" if (names := item.target_names.get(name))
                                  and names != [item.module] else "") + ")" for item in top)
            out.print(f"{name}: most sensitive layers to weight rounding (relative output error): {escape(listed)}")
