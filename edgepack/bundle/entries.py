"""The building blocks every manifest section shares: strict models, files with checksums, latency."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Number = float | int
Bound = Literal["max", "min"]
Status = Literal["passed", "failed", "error"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON-ready dict: the fields that were set, as they were given."""
        return self.model_dump(exclude_unset=True, by_alias=True)


class LatencyFigure(_Strict):
    """Median and 90th percentile of timed runs at one batch size."""

    median_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    device: Optional[str] = None
    padded: Optional[str] = None
    cut_short: Optional[str] = None  # timing stopped at the recipe's latency.max_seconds


Latency = dict[str, LatencyFigure]  # "batch_1", "batch_64", ...


def batch_of(key: str) -> int:
    """The batch size of a latency key ("batch_64" -> 64)."""
    return int(key.removeprefix("batch_"))


class FileEntry(_Strict):
    """A file of the bundle with its checksum."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class Timing(_Strict):
    """The larger batch size (batch 1 is always timed), warm-up and timed runs, threads."""

    batch_size: int
    warmup: int
    repeats: int
    threads: int
