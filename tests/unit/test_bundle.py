"""Bundle staging (atomic replace, refusal, clean failure) and checksum verification."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from edgepack.bundle.entries import FileEntry
from edgepack.bundle.files import MANIFEST, Bundle, check_checksums, sha256_file, staging, why_not_replaceable
from edgepack.bundle.manifest import SCHEMA_VERSION, previous_schema_files
from edgepack.errors import ConfigError, VerificationError


def write_json(path, data):
    """Write `data` as JSON."""
    path.write_text(json.dumps(data))


def entries(folder):
    """Names in `folder`, including hidden staging or retired directories."""
    return sorted(path.name for path in folder.iterdir())


def test_staging_moves_completed_directory_into_place(tmp_path):
    destination = tmp_path / "out" / "bundle"
    with staging(destination) as stage:
        assert stage.is_dir() and stage.parent == destination.parent
        assert stage.name.startswith(".bundle.staging-")
        assert not destination.exists()  # nothing is visible until the bundle is complete
        (stage / "model.onnx").write_bytes(b"onnx")
        write_json(stage / MANIFEST, {"schema_version": SCHEMA_VERSION})
    assert entries(destination.parent) == ["bundle"]
    assert entries(destination) == [MANIFEST, "model.onnx"]
    assert (destination / "model.onnx").read_bytes() == b"onnx"


def test_staging_replaces_existing_bundle(tmp_path):
    destination = tmp_path / "bundle"
    destination.mkdir()
    write_json(destination / MANIFEST, {"schema_version": SCHEMA_VERSION, "old": True})
    (destination / "stale.onnx").write_bytes(b"old")
    with staging(destination, force=True) as stage:
        assert (destination / "stale.onnx").exists()  # the old bundle stays usable while packing
        write_json(stage / MANIFEST, {"schema_version": SCHEMA_VERSION, "old": False})
    assert entries(tmp_path) == ["bundle"]
    assert entries(destination) == [MANIFEST]
    assert json.loads((destination / MANIFEST).read_text())["old"] is False


def test_staging_accepts_an_empty_directory(tmp_path):
    destination = tmp_path / "bundle"
    destination.mkdir()
    with staging(destination) as stage:
        (stage / "a.txt").write_text("a")
    assert entries(destination) == ["a.txt"]


def test_staging_refuses_non_bundle_directory(tmp_path):
    destination = tmp_path / "precious"
    destination.mkdir()
    (destination / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not an edgepack bundle; refusing to replace it .*--force"):
        with staging(destination):
            pytest.fail("the body must not run")
    assert entries(destination) == ["thesis.tex"]
    assert entries(tmp_path) == ["precious"]


def test_staging_refuses_a_folder_that_merely_holds_a_manifest_json(tmp_path):
    destination = tmp_path / "webapp"
    (destination / "src").mkdir(parents=True)
    write_json(destination / MANIFEST, {"name": "my-app", "start_url": "/"})
    (destination / "src" / "index.js").write_text("console.log('hi')")
    with pytest.raises(ConfigError, match="not a valid edgepack manifest.*refusing to replace it"):
        with staging(destination):
            pytest.fail("the body must not run")
    assert (destination / "src" / "index.js").read_text() == "console.log('hi')"


def test_staging_refuses_a_bundle_with_changed_or_extra_files(tmp_path, monkeypatch):
    destination = tmp_path / "bundle"
    destination.mkdir()
    manifest = make_bundle(destination)
    monkeypatch.setattr("edgepack.bundle.files._load_manifest", lambda folder: _Listing(manifest))
    assert why_not_replaceable(destination) is None
    (destination / "notes.txt").write_text("mine")
    assert "holds files the bundle does not list (notes.txt)" in why_not_replaceable(destination)
    (destination / "notes.txt").unlink()
    (destination / "x86" / "model.int8.onnx").write_bytes(b"INT8")
    assert "files changed since packing" in why_not_replaceable(destination)
    with pytest.raises(ConfigError, match="changed since packing"):
        with staging(destination):
            pytest.fail("the body must not run")
    with staging(destination, force=True) as stage:
        (stage / "new.onnx").write_bytes(b"new")
    assert entries(destination) == ["new.onnx"]


class _Listing:
    """Stands in for a validated Manifest built from a checksum-only dict: only its files."""

    def __init__(self, manifest):
        self.manifest = manifest

    def files(self):
        return listed(self.manifest)


def listed(manifest) -> list[FileEntry]:
    """The files a checksum-only manifest dict lists."""
    return previous_schema_files(manifest, (SCHEMA_VERSION,))


def test_staging_refuses_a_file(tmp_path):
    destination = tmp_path / "bundle"
    destination.write_text("a file")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        with staging(destination):
            pytest.fail("the body must not run")
    assert destination.read_text() == "a file"


def test_failure_leaves_nothing_behind(tmp_path):
    destination = tmp_path / "out" / "bundle"
    with pytest.raises(RuntimeError, match="boom"):
        with staging(destination) as stage:
            (stage / "half.onnx").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not destination.exists()
    assert entries(destination.parent) == []


def test_failure_keeps_existing_bundle_untouched(tmp_path):
    destination = tmp_path / "bundle"
    destination.mkdir()
    write_json(destination / MANIFEST, {"schema_version": SCHEMA_VERSION})
    (destination / "model.onnx").write_bytes(b"good")
    with pytest.raises(KeyboardInterrupt):
        with staging(destination, force=True) as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert entries(tmp_path) == ["bundle"]
    assert (destination / "model.onnx").read_bytes() == b"good"


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def make_bundle(folder):
    """A bundle with a reference model and two artifacts under two targets, with a matching manifest."""
    files = {"reference/model.fp32.onnx": b"fp32", "x86/model.int8.onnx": b"int8", "arm/model.tflite": b"tfl"}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)

    def entry(relative):
        data = files[relative]
        return {"path": relative, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    manifest = {"schema_version": SCHEMA_VERSION, "reference": entry("reference/model.fp32.onnx"),
                "targets": {"x86": {"artifacts": [entry("x86/model.int8.onnx")]},
                            "arm": {"artifacts": [entry("arm/model.tflite")]},
                            "broken": {"status": "failed", "artifacts": []}}}
    write_json(folder / MANIFEST, manifest)
    return manifest


def test_checksums_pass_on_intact_bundle(tmp_path):
    manifest = make_bundle(tmp_path)
    assert check_checksums(tmp_path, listed(manifest)) == []


def test_opening_refuses_a_malformed_manifest_naming_the_field(tmp_path):
    make_bundle(tmp_path)  # a checksum-only manifest: most required fields are missing
    with pytest.raises(VerificationError, match=r"malformed manifest: \w+: Field required \(and \d+ more problems\)"):
        Bundle.open(tmp_path)


def test_checksums_detect_modified_file(tmp_path):
    manifest = make_bundle(tmp_path)
    (tmp_path / "x86" / "model.int8.onnx").write_bytes(b"INT8")  # same size, different bytes
    problems = check_checksums(tmp_path, listed(manifest))
    assert problems == ["x86/model.int8.onnx: checksum mismatch (file changed since packing)"]


def test_checksums_detect_size_change_and_missing_file(tmp_path):
    manifest = make_bundle(tmp_path)
    (tmp_path / "reference" / "model.fp32.onnx").write_bytes(b"fp32 plus more")
    (tmp_path / "arm" / "model.tflite").unlink()
    problems = check_checksums(tmp_path, listed(manifest))
    assert problems == ["reference/model.fp32.onnx: checksum mismatch (file changed since packing)",
                        "arm/model.tflite: missing"]


def test_opening_errors(tmp_path):
    with pytest.raises(VerificationError, match="not an edgepack bundle"):
        Bundle.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(VerificationError, match="unreadable manifest"):
        Bundle.open(tmp_path)
    write_json(tmp_path / MANIFEST, {"schema_version": 99})
    with pytest.raises(VerificationError, match="schema_version 99 is not supported"):
        Bundle.open(tmp_path)


def test_leftover_retired_directory_does_not_break_replacement(tmp_path):
    destination = tmp_path / "bundle"
    destination.mkdir()
    write_json(destination / MANIFEST, {"schema_version": SCHEMA_VERSION})
    leftover = tmp_path / f".bundle.old-{os.getpid()}"  # from a run with the same pid (containers reuse pids)
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"old")
    with staging(destination, force=True) as stage:
        (stage / "new.onnx").write_bytes(b"new")
    assert entries(destination) == ["new.onnx"]
    assert not [name for name in entries(tmp_path) if ".staging-" in name]


def test_stale_staging_of_dead_runs_is_cleaned_and_reported(tmp_path):
    destination = tmp_path / "bundle"
    dead = tmp_path / ".bundle.staging-999999999-abc"  # no process has this pid
    (dead / "x86").mkdir(parents=True)
    (dead / "x86" / "model.onnx").write_bytes(b"half-written")
    retired = tmp_path / ".bundle.old-999999999-def"
    retired.mkdir()
    running = tmp_path / f".bundle.staging-{os.getppid()}-ghi"  # a live process: another run still packing
    running.mkdir()
    reported = []
    with staging(destination, on_clean=reported.append) as stage:
        (stage / "a.txt").write_text("a")
    assert not dead.exists() and not retired.exists() and running.exists()
    assert len(reported) == 2 and "12 bytes" in reported[0] and "pid 999999999, no longer running" in reported[0]


def test_staging_names_carry_the_pid(tmp_path):
    with staging(tmp_path / "bundle") as stage:
        assert stage.name.startswith(f".bundle.staging-{os.getpid()}-")


def test_a_bundle_of_the_previous_schema_is_replaced(tmp_path):
    destination = tmp_path / "bundle"
    destination.mkdir()
    manifest = make_bundle(destination)
    write_json(destination / MANIFEST, {**manifest, "schema_version": 1})
    assert why_not_replaceable(destination) is None
    write_json(destination / MANIFEST, {**manifest, "schema_version": 0})
    assert "not a valid edgepack manifest" in why_not_replaceable(destination)
