"""Sequence buckets: one text artifact exported at several fixed sequence lengths, and the routing rule
that every reader shares (the runner that verifies it, the manifest that counts rows, the phone app).

A row goes to the shortest length that holds every token its attention mask keeps (right padding): the
model of that length sees the same tokens, so a mean-pool or CLS classifier gives the same outputs.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Optional, Sequence

import numpy as np
from pydantic import Field

from edgepack.bundle.entries import FileEntry, _Strict


def route(attention_mask: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Per row, the shortest of `lengths` that reaches the row's last kept token (the longest when none does)."""
    kept = np.asarray(attention_mask) != 0
    width = kept.shape[1]
    # tokens up to and including the last kept one; a mask with holes keeps its holes inside the slice
    needed = np.where(kept.any(axis=1), width - np.argmax(kept[:, ::-1], axis=1), 0)
    ordered = np.asarray(sorted(lengths))
    return ordered[np.minimum(np.searchsorted(ordered, needed), len(ordered) - 1)]


def routed_counts(attention_mask: np.ndarray, lengths: Sequence[int]) -> dict[int, int]:
    """How many rows `route` sends to each of `lengths` (zero included)."""
    chosen = route(attention_mask, lengths)
    return {int(length): int((chosen == length).sum()) for length in sorted(lengths)}


class SequenceBucket(_Strict):
    """One model of the set: its fixed length, its file beside the artifact, how it was calibrated."""

    length: int = Field(ge=1)
    file: str  # name beside the artifact's main file
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    calibration_rows: int
    calibration: str  # which calibration rows it saw: those that fit, or all of them cut to the length
    evaluation_rows: Optional[int] = None  # held-out rows routed to it when the artifact was verified


class SequenceBuckets(_Strict):
    """The bucketed model set of a text artifact, in `structure["sequence_buckets"]`."""

    option: str
    routing: str
    latency: str
    buckets: list[SequenceBucket]

    @property
    def lengths(self) -> list[int]:
        """The fixed sequence lengths, shortest first."""
        return sorted(bucket.length for bucket in self.buckets)

    def companion_files(self, artifact_path: str) -> list[FileEntry]:
        """The files besides `artifact_path` (the main, longest model), with bundle-relative paths."""
        folder, main = PurePosixPath(artifact_path).parent, PurePosixPath(artifact_path).name
        return [FileEntry(path=str(folder / bucket.file), sha256=bucket.sha256, size_bytes=bucket.size_bytes)
                for bucket in self.buckets if bucket.file != main]

    def with_evaluation(self, attention_mask: np.ndarray) -> "SequenceBuckets":
        """A copy recording how many rows of the held-out set go to each length."""
        counts = routed_counts(attention_mask, self.lengths)
        return self.model_copy(update={"buckets": [bucket.model_copy(update={"evaluation_rows": counts[bucket.length]})
                                                   for bucket in self.buckets]})
