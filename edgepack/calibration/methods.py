"""Calibration methods: one small frozen class each, chosen by `name` in the recipe."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Method(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # onnxruntime's histogram calibrators fail on an uneven last batch; MinMax does not care.
    needs_equal_batches: ClassVar[bool] = True


class MinMax(_Method):
    """Range = observed min and max of each activation."""

    name: Literal["minmax"] = "minmax"
    needs_equal_batches: ClassVar[bool] = False


class Percentile(_Method):
    """Range clipped to the p-th percentile of each activation's absolute values."""

    name: Literal["percentile"] = "percentile"
    percentile: float = Field(99.999, gt=50.0, lt=100.0)


class Entropy(_Method):
    """Range minimising KL divergence between float and quantized histograms (TensorRT style).

    `num_bins` histogram bins are folded into `num_quantized_bins`; with equal counts
    (onnxruntime's default of 128/128) the search space is a single candidate and the result
    equals MinMax, so we require more histogram bins than quantized bins.
    """

    name: Literal["entropy"] = "entropy"
    num_bins: int = Field(2048, ge=256, le=16384)
    num_quantized_bins: int = Field(128, ge=16, le=255)


class PerTensorMse(_Method):
    """Per activation tensor, the range among minmax and the `CANDIDATES` percentiles of that tensor's
    histogram with the least expected squared quantization error (clipping beyond the range plus
    rounding inside it) on the target's activation grid: asymmetric uint8 on x86, symmetric int8 on cuda.
    """

    name: Literal["mse"] = "mse"
    num_bins: int = Field(default=2048, ge=256, le=16384, multiple_of=2)  # even: the histogram folds about zero
    CANDIDATES: ClassVar[tuple[float, ...]] = (100.0, 99.999, 99.99, 99.9, 99.0)  # 100: the observed min and max


CalibrationMethod = Annotated[Union[MinMax, Percentile, Entropy, PerTensorMse], Field(discriminator="name")]
