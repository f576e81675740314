"""Bundles: built in a staging directory and moved into place only when complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgepack.errors import ConfigError, VerificationError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.md"
REPORT_HTML = "report.html"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staging(destination: Path) -> Iterator[Path]:
    """Yield an empty directory next to `destination`; on success it replaces `destination` atomically
    (as far as the filesystem allows), on failure it is removed and `destination` is untouched."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ConfigError(f"output {destination} exists and is not a directory")
    if destination.is_dir() and any(destination.iterdir()) and not (destination / MANIFEST).is_file():
        raise ConfigError(f"output {destination} is a non-empty directory that is not an edgepack bundle; "
                          "refusing to replace it")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    except OSError as exc:
        raise ConfigError(f"cannot create output directory next to {destination}: {exc}") from exc
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    retired = None
    try:
        if destination.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            os.replace(destination, retired)
        os.replace(stage, destination)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if retired is not None and not destination.exists():
            os.replace(retired, destination)
        raise ConfigError(f"cannot move the new bundle into {destination}: {exc}") from exc
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def write_bundle_documents(bundle: Path, manifest: dict) -> None:
    """Write manifest.json, report.md and report.html, each replaced atomically."""
    from edgepack.report import render_markdown
    from edgepack.report_html import render_html

    documents = {MANIFEST: json.dumps(manifest, indent=2) + "\n", REPORT: render_markdown(manifest),
                 REPORT_HTML: render_html(manifest)}
    for name, text in documents.items():
        temporary = Path(bundle) / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, Path(bundle) / name)


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, with a clear error when it is missing or unreadable."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise VerificationError(f"{bundle}: bundle directory does not exist")
    if not path.is_file():
        raise VerificationError(f"{bundle}: not an edgepack bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{path}: unreadable manifest: {exc}") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise VerificationError(f"{path}: schema_version {manifest.get('schema_version')!r} is not supported "
                                f"(this edgepack reads {SCHEMA_VERSION})")
    return manifest


def check_checksums(bundle: Path, manifest: dict) -> list[str]:
    """Every file the manifest lists must exist with its recorded size and SHA-256; returns problems."""
    problems = []
    root = Path(bundle).resolve()
    for entry in iter_files(manifest):
        path = (root / entry["path"]).resolve()
        if not path.is_relative_to(root):
            problems.append(f"{entry['path']}: points outside the bundle")
        elif not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size_bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: checksum mismatch (file changed since packing)")
    return problems


def artifact_entries(manifest: dict) -> list[tuple[str, dict]]:
    """(target name, artifact entry) for every artifact the manifest lists."""
    return [(name, item) for name, target in manifest["targets"].items() for item in target.get("artifacts", [])]


def validation_notes(manifest: dict) -> list[str]:
    """The distinct caveats targets attached to how their artifacts were validated (e.g. CPU for CUDA)."""
    return sorted({item["structure"].get("validation") for _, item in artifact_entries(manifest)} - {None})


def iter_files(manifest: dict) -> Iterator[dict]:
    """Manifest entries that describe files: the reference model and every artifact."""
    yield manifest["reference"]
    yield from manifest.get("pruning", {}).get("files", [])
    yield from (item for _, item in artifact_entries(manifest))
