"""Bundle files: built in a staging directory and moved into place only when complete; checksums;
`Bundle.open`, the one way to read a bundle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from pydantic import ValidationError

from edgepack.bundle.entries import FileEntry
from edgepack.bundle.manifest import READABLE_SCHEMAS, Manifest, previous_schema_files
from edgepack.bundle.signing import SIGNATURE
from edgepack.capture import LOG_NAME
from edgepack.errors import ConfigError, VerificationError
from edgepack.recipe.load import parse_recipe
from edgepack.recipe.schema import Recipe

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
def staging(destination: Path, *, force: bool = False,
            on_clean: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """Yield an empty directory next to `destination`; on success it replaces `destination` atomically
    (as far as the filesystem allows), on failure it is removed and `destination` is untouched.

    A non-empty `destination` is replaced only when it is an intact edgepack bundle (see
    `why_not_replaceable`), or with `force`. Staging and retired folders of dead runs are removed
    first, each reported to `on_clean`."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ConfigError(f"output {destination} exists and is not a directory")
    if destination.is_dir() and any(destination.iterdir()) and not force:
        problem = why_not_replaceable(destination)
        if problem is not None:
            raise ConfigError(f"output {destination} {problem}; refusing to replace it (choose another --out, "
                              "or pass --force to replace it anyway)")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        for removed in clean_stale(destination):
            if on_clean is not None:
                on_clean(removed)
        stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-{os.getpid()}-", dir=destination.parent))
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
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{os.getpid()}-", dir=destination.parent))
            os.replace(destination, retired)
        os.replace(stage, destination)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if retired is not None:
            if destination.exists():  # the old bundle never moved: drop the empty placeholder
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(retired, destination)
        raise ConfigError(f"cannot move the new bundle into {destination}: {exc}") from exc
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


STALE_AGE_S = 24 * 3600  # folders of the older naming (no pid) count as stale after a day


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(destination: Path) -> list[str]:
    """Remove `.NAME.staging-*` and `.NAME.old-*` folders next to `destination` left by runs that died
    (killed, power loss): their pid is no longer running, or, without a pid in the name, they are
    older than a day. Folders of a run still going are kept. Returns one line per removed folder."""
    removed = []
    for kind in ("staging", "old"):
        for folder in Path(destination).parent.glob(f".{Path(destination).name}.{kind}-*"):
            if not folder.is_dir():
                continue
            match = re.match(rf"\.{re.escape(Path(destination).name)}\.{kind}-(\d+)-", folder.name)
            pid = int(match.group(1)) if match else None
            stale = (pid != os.getpid() and not _alive(pid)) if pid is not None else \
                time.time() - folder.stat().st_mtime > STALE_AGE_S
            if stale:
                size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
                shutil.rmtree(folder, ignore_errors=True)
                owner = f"pid {pid}, no longer running" if pid is not None else "older than a day"
                removed.append(f"removed {folder.name} ({size:,} bytes) left by a run that died ({owner})")
    return removed


BUNDLE_DOCUMENTS = frozenset({MANIFEST, REPORT, REPORT_HTML, LOG_NAME, SIGNATURE})


def unlisted_files(folder: Path, files: Iterable[FileEntry]) -> list[str]:
    """Files in the bundle (relative paths) that are not among `files`, besides its documents and log."""
    listed = {entry.path for entry in files} | BUNDLE_DOCUMENTS
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*")
                  if path.is_file() and str(path.relative_to(folder)) not in listed)


def why_not_replaceable(folder: Path) -> Optional[str]:
    """None when `folder` is an intact edgepack bundle: a valid manifest, every listed file matching its
    checksum, and no file the bundle does not account for. Otherwise what is wrong, so that a folder
    that merely holds a file named manifest.json (a web app, say) is never wiped."""
    if not (folder / MANIFEST).is_file():
        return "is a non-empty directory that is not an edgepack bundle"
    try:
        files = _previous_schema_files(folder) or _load_manifest(folder).files()
    except VerificationError as exc:
        return f"holds a {MANIFEST} that is not a valid edgepack manifest ({exc})"
    problems = check_checksums(folder, files)
    if problems:
        return f"is an edgepack bundle whose files changed since packing ({'; '.join(problems[:3])})"
    extra = unlisted_files(folder, files)
    if extra:
        return f"holds files the bundle does not list ({', '.join(extra[:5])})"
    return None


PREVIOUS_SCHEMAS = (1,)  # bundles of earlier edgepack versions: replaceable, not readable by verify


def _previous_schema_files(folder: Path) -> Optional[list[FileEntry]]:
    """The files listed by the manifest of a bundle written by an earlier edgepack, else None."""
    try:
        raw = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return previous_schema_files(raw, PREVIOUS_SCHEMAS)


def _load_manifest(bundle: Path) -> Manifest:
    """The bundle's manifest, validated against the typed model (edgepack.bundle.manifest); a clear
    error naming the field when it is missing, unreadable, of another schema or malformed."""
    path = Path(bundle) / MANIFEST
    if not Path(bundle).is_dir():
        raise VerificationError(f"{bundle}: bundle directory does not exist")
    if not path.is_file():
        raise VerificationError(f"{bundle}: not an edgepack bundle (no {MANIFEST})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{path}: unreadable manifest: {exc}") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READABLE_SCHEMAS:
        raise VerificationError(f"{path}: schema_version {version!r} is not supported "
                                f"(this edgepack reads {', '.join(map(str, READABLE_SCHEMAS))}; re-pack the bundle)")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise VerificationError(f"{path}: malformed manifest: {_first_problem(exc)}") from exc


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


@dataclass(frozen=True)
class Bundle:
    """A bundle folder with its validated manifest and the recipe it was packed from, parsed once."""

    folder: Path
    manifest: Manifest
    recipe: Recipe

    @classmethod
    def open(cls, folder: Path) -> "Bundle":
        """Read and validate `folder`'s manifest and parse its stored recipe; VerificationError naming the
        field when either is malformed."""
        folder = Path(folder)
        manifest = _load_manifest(folder)
        try:
            recipe = parse_recipe(manifest.recipe, source=f"{folder / MANIFEST}: recipe",
                                  base_dir=Path(manifest.recipe_dir))
        except ConfigError as exc:
            raise VerificationError(f"malformed stored recipe: {exc}") from exc
        return cls(folder=folder, manifest=manifest, recipe=recipe)


def check_checksums(bundle: Path, files: Iterable[FileEntry]) -> list[str]:
    """Every file in `files` must exist in the bundle with its recorded size and SHA-256; returns problems."""
    problems = []
    root = Path(bundle).resolve()
    for entry in files:
        path = (root / entry.path).resolve()
        if not path.is_relative_to(root):
            problems.append(f"{entry.path}: points outside the bundle")
        elif not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.size_bytes or sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: checksum mismatch (file changed since packing)")
    return problems
