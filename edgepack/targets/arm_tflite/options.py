"""The options of target `arm-tflite` (`target_options.arm-tflite` in the recipe)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TfliteOptions(BaseModel):
    """Options under `target_options.arm-tflite` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    float_io: bool = False  # float32 inputs/outputs, with QUANTIZE/DEQUANTIZE ops added at the boundary
    nhwc: bool = False  # channel-last I/O for 4-D (image) inputs, as Android camera pipelines deliver
    batch: int = Field(1, ge=1, le=4096)  # the artifact's fixed batch; a recommender scoring candidates wants > 1
    sequence_lengths: tuple[int, ...] = Field((), description=(
        "text models: also export at these shorter fixed sequence lengths (text.max_length is always included), "
        "one .tflite each; each text runs on the shortest that holds its tokens"))
