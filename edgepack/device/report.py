"""The report verify_on_device.py writes on a device (`--json`), read back for
`edgepack verify BUNDLE --device-report FILE`: validated against a typed model, and every file it
reports checked against the bundle's manifest, so a report of another build is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgepack.device import verify_on_device as device_script
from edgepack.errors import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, VerificationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceHost(_Strict):
    """The device: CPU, machine, ISA features edgepack tracks, platform, Python and numpy."""

    cpu: str
    machine: str
    isa: list[str]
    cpu_count: Optional[int] = None
    platform: str
    python: str
    numpy: str


class DeviceCheck(_Strict):
    """One check on the device: a budget bound, or the outputs against the packing host's."""

    kind: Literal["budget", "outputs"]
    metric: str
    value: Optional[float]  # null when not a number (an undefined metric)
    limit: float
    bound: Literal["max", "min"]
    passed: bool
    note: Optional[str] = None


class DeviceArtifact(_Strict):
    """What happened to one artifact on the device."""

    target: str
    file: str
    sha256: Optional[str] = Field(pattern=r"^[0-9a-f]{64}$")
    runtime: Optional[str]
    runtime_version: Optional[str]
    execution_provider: Optional[str]
    samples: Optional[int]
    status: Literal["passed", "failed", "skipped", "error"]
    passed: Optional[bool]
    metrics: dict[str, Optional[float | int]]
    checks: list[DeviceCheck]
    message: Optional[str]
    seconds: Optional[float]


class DeviceReport(_Strict):
    """A device's report on a bundle; `exit_code` is re-derived from the entries, not taken from the file."""

    kind: Literal["edgepack-device-report"]
    schema_version: Literal[1]
    created_utc: str
    root: str
    exit_code: int
    host: DeviceHost
    artifacts: list[DeviceArtifact]

    @property
    def verdict_exit_code(self) -> int:
        """0 when every artifact that ran passed, 3 when one failed its checks, 1 on an error or when none ran."""
        statuses = {artifact.status for artifact in self.artifacts}
        if "error" in statuses or not statuses & {"passed", "failed"}:
            return EXIT_ERROR
        return EXIT_DRIFT if "failed" in statuses else EXIT_OK


def read_device_report(path: Path, manifest_files: Mapping[str, str]) -> DeviceReport:
    """The report at `path`, validated; every reported file must be one the bundle lists (`manifest_files`: path
    -> sha256, e.g. {entry.path: entry.sha256 for entry in manifest.files()}) with the same sha256. Any problem
    is a one-line VerificationError naming the file and what is wrong."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise VerificationError(f"{path}: cannot read the device report: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise VerificationError(f"{path}: not a JSON device report: {exc.msg} at line {exc.lineno} column "
                                f"{exc.colno}") from exc
    if not isinstance(raw, dict) or raw.get("kind") != device_script.REPORT_KIND:
        raise VerificationError(f"{path}: not a device report of verify_on_device.py (kind "
                                f"{device_script.REPORT_KIND!r} expected)")
    if raw.get("schema_version") != device_script.REPORT_VERSION:
        raise VerificationError(f"{path}: device report schema_version {raw.get('schema_version')!r} is not "
                                f"supported (this edgepack reads {device_script.REPORT_VERSION})")
    try:
        report = DeviceReport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise VerificationError(f"{path}: malformed device report: {where}: {first['msg']}{more}") from exc
    for artifact in report.artifacts:
        recorded = manifest_files.get(artifact.file)
        if recorded is None:
            raise VerificationError(f"{path}: reports {artifact.file}, which this bundle does not list: a report of "
                                    "another bundle")
        if artifact.sha256 is not None and artifact.sha256 != recorded:
            raise VerificationError(f"{path}: {artifact.file} on the device has sha256 {artifact.sha256[:12]}..., "
                                    f"the bundle's manifest records {recorded[:12]}...: the device ran another file")
    return report


def summarize(report: DeviceReport) -> list[str]:
    """Lines for the terminal: the device, one line per artifact, the verdict."""
    host = report.host
    lines = [f"device report of {report.created_utc}: {host.cpu} ({host.machine}), ISA: "
             f"{' '.join(host.isa) or 'none of the tracked features'}; python {host.python}, numpy {host.numpy}"]
    for artifact in report.artifacts:
        head = f"  {artifact.file}: {artifact.status} on the device"
        if artifact.status in ("skipped", "error"):
            lines.append(f"{head}: {artifact.message}")
            continue
        metrics = {key: value if value is not None else float("nan") for key, value in artifact.metrics.items()}
        line = (f"{head} ({artifact.runtime} {artifact.runtime_version}, {artifact.execution_provider}), "
                f"{artifact.samples} golden samples: {device_script.describe_metrics(metrics)}")
        failed = [device_script.describe_check({**check.model_dump(), "value": _number(check.value)})
                  for check in artifact.checks if not check.passed]
        lines.append(line + (f"; failed: {'; '.join(failed)}" if failed else ""))
    verdict = {EXIT_OK: "passed", EXIT_DRIFT: "failed (drift or outputs off the packing host's)",
               EXIT_ERROR: "error (see above)"}[report.verdict_exit_code]
    counts = ", ".join(f"{sum(a.status == status for a in report.artifacts)} {status}"
                       for status in ("passed", "failed", "skipped", "error"))
    lines.append(f"device verdict: {verdict} ({counts})")
    return lines


def _number(value: Optional[float]) -> float:
    return float("nan") if value is None else value
