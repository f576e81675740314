"""Readers: turn a data file or a Python callable into named numpy arrays (all samples)."""

from __future__ import annotations

import csv
import fnmatch
import importlib
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import numpy as np

from edgepack.errors import DataError, MissingDependencyError, describe

Columns = Mapping[str, Union[str, list[str]]]


Found = tuple[dict[str, np.ndarray], list[str]]


def read_arrays(path: Path, *, wanted: list[str], columns: Optional[Columns] = None) -> Found:
    """The arrays named in `wanted` that the file has, and every name the file holds (for error messages)."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a data file (.npz, .npy, .csv or .parquet)")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, wanted)
    if suffix == ".npy":
        return _read_npy(path, wanted)
    if suffix in (".csv", ".parquet", ".pq"):
        return _read_table(path, wanted, columns or {})
    raise DataError(f"{path}: unsupported data format '{suffix}'; expected .npz, .npy, .csv or .parquet")


def _read_npz(path: Path, wanted: list[str]) -> Found:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in wanted if name in archive.files}, list(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read .npz archive ({describe(exc)}); is the file complete?"
                        ) from exc


def _read_npy(path: Path, wanted: list[str]) -> Found:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read .npy array: {exc}") from exc
    return {wanted[0]: array}, [f"one unnamed array (read as '{wanted[0]}')"]


def _read_table(path: Path, wanted: list[str], columns: Columns) -> Found:
    frame = _load_table(path)
    available = list(frame)
    arrays: dict[str, np.ndarray] = {}
    for name in wanted:
        selection = columns.get(name, name)
        try:
            names = _select_columns(selection, available)
        except DataError as exc:
            raise DataError(f"{path}: input '{name}': {exc}") from None
        if not names:
            continue
        try:
            block = np.stack([np.asarray(frame[column]) for column in names], axis=1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: columns for '{name}' are not numeric: {exc}") from exc
        arrays[name] = block[:, 0] if isinstance(selection, str) and not _is_pattern(selection) else block
    return arrays, [f"columns {', '.join(available[:8])}"
                    + (f" (+{len(available) - 8} more)" if len(available) > 8 else "")]


def _is_pattern(selection: str) -> bool:
    return any(ch in selection for ch in "*?[")


def _select_columns(selection: Union[str, list[str]], available: list[str]) -> list[str]:
    if isinstance(selection, list):
        unknown = [column for column in selection if column not in available]
        if unknown:
            raise DataError(f"columns not in the table: {', '.join(unknown[:5])}")
        return selection
    if _is_pattern(selection):
        return [column for column in available if fnmatch.fnmatchcase(column, selection)]
    return [selection] if selection in available else []


def load_table(path: Path) -> dict[str, np.ndarray]:
    """Every column of a .csv (numeric cells only) or .parquet table, by name."""
    return _load_table(path)


def _load_table(path: Path) -> dict[str, np.ndarray]:
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:
        raise MissingDependencyError("reading parquet data", "pyarrow", "parquet") from exc
    try:
        table = parquet.read_table(path)
    except Exception as exc:  # pyarrow raises many unrelated types for corrupt files
        raise DataError(f"{path}: cannot read parquet: {exc}") from exc
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _load_csv(path: Path) -> dict[str, np.ndarray]:
    """Columns by their header names exactly as written; an empty or non-numeric cell is an error."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
        if not header:
            raise DataError(f"{path}: CSV has no header row")
        data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=None, encoding="utf-8", usemask=True,
                             names=None, ndmin=1)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV: {exc}") from exc
    if data.size == 0:
        raise DataError(f"{path}: CSV has no data rows")
    fields = data.dtype.names or ()
    if len(fields) != len(header):
        raise DataError(f"{path}: rows have {len(fields)} fields, the header has {len(header)}")
    columns = {}
    for name, field_name in zip(header, fields):
        column = data[field_name]
        missing = np.flatnonzero(np.ma.getmaskarray(column))
        if missing.size:
            raise DataError(f"{path}: column '{name}' has an empty or unreadable cell in data row {missing[0] + 1}")
        columns[name] = np.ma.getdata(column)
    return columns


def read_callable(spec: str, *, base_dir: Path, wanted: list[str]) -> Found:
    """Call `module:function` (imported with the recipe's folder on sys.path) and concatenate its batches.

    The callable returns an iterable of batches, each a mapping of name -> array.
    """
    function = import_object(spec, base_dir=base_dir, what="data callable")
    try:
        batches: Iterable = function()
        collected: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        seen: dict[str, None] = {}
        for batch in batches:
            if not isinstance(batch, Mapping):
                raise DataError(f"data callable {spec}: each batch must be a mapping of input name to array, "
                                f"got {type(batch).__name__}")
            seen.update(dict.fromkeys(batch))
            for name in wanted:
                if name in batch:
                    collected[name].append(np.asarray(batch[name]))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data callable {spec} failed: {describe(exc)}") from exc
    return {name: np.concatenate(parts) for name, parts in collected.items() if parts}, [str(k) for k in seen]


def import_object(spec: str, *, base_dir: Path, what: str) -> Callable:
    """Import `package.module:attribute`, trying the recipe's folder first for local modules."""
    module_name, _, attribute = spec.partition(":")
    _forget_foreign_module(module_name, base_dir)
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _import_error(what, spec, exc) from exc
    finally:
        if added:
            sys.path.remove(str(base_dir))
    if not hasattr(module, attribute):
        raise _import_error(what, spec, AttributeError(f"module '{module_name}' has no attribute '{attribute}'"))
    return getattr(module, attribute)


def _forget_foreign_module(module_name: str, base_dir: Path) -> None:
    """If the recipe folder has its own `module_name`, drop a same-named module imported from elsewhere,
    so two recipes with a local `model.py` each get their own."""
    local = Path(base_dir, *module_name.split("."))
    if not (local.with_suffix(".py").is_file() or (local / "__init__.py").is_file()):
        return
    cached = sys.modules.get(module_name)
    cached_file = getattr(cached, "__file__", None)
    if cached is not None and (cached_file is None or Path(cached_file).resolve().parent != local.parent.resolve()
                               and Path(cached_file).resolve().parent != local.resolve()):
        del sys.modules[module_name]


def _import_error(what: str, spec: str, exc: Exception) -> Exception:
    from edgepack.errors import ModelLoadError

    error_cls = ModelLoadError if what == "model factory" else DataError
    return error_cls(f"cannot import {what} '{spec}': {describe(exc)}")
