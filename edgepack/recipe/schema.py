"""Recipe schema: the whole recipe is validated here before any heavy work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgepack.calibration.methods import CalibrationMethod, MinMax
from edgepack.errors import ConfigError
from edgepack.evaluation.tasks import TASKS
from edgepack.recipe.budget import Budget, MissingBudget
from edgepack.registry import check_target_name
from edgepack.text.spec import TEXT_INPUTS, TextConfig, text_input_specs

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8")


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.resolve()


RecipePath = Annotated[Path, AfterValidator(_resolve_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Section):
    """One model input: its name, element type and shape with a symbolic batch dimension."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[Union[StrictInt, str]] = Field(min_length=1)
    range: Optional[tuple[StrictInt, StrictInt]] = Field(
        None, description="valid ids [low, high) of an integer input, e.g. [0, table rows]")

    @model_validator(mode="after")
    def _batch_first(self) -> "InputSpec":
        if self.range is not None:
            if not self.dtype.startswith(("int", "uint")):
                raise ValueError(f"'range' is for integer id inputs, not {self.dtype}")
            if self.range[0] >= self.range[1]:
                raise ValueError(f"range must be [low, high) with low < high, got {list(self.range)}")
        if not isinstance(self.shape[0], str):
            raise ValueError(f"shape[0] must be a symbolic batch name such as 'batch', got {self.shape[0]!r}")
        for dim in self.shape[1:]:
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"dimensions after the batch must be positive integers, got {dim!r}")
        return self

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(int(d) for d in self.shape[1:])


class ModelSource(_Section):
    """Where the float model comes from: a factory plus weights, an ONNX file, a Hugging Face folder, or
    (opt-in) a pickle."""

    factory: Optional[str] = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Optional[RecipePath] = None
    onnx: Optional[RecipePath] = None
    pickle: Optional[RecipePath] = None
    allow_pickle: bool = False
    huggingface: Optional[RecipePath] = Field(
        None, description="a local folder written by save_pretrained: AutoModelForSequenceClassification, read "
                          "offline, taking input_ids and attention_mask and returning logits")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        given = [k for k in ("factory", "onnx", "pickle", "huggingface") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'factory' (with 'weights'), 'onnx', 'huggingface' or 'pickle'; got "
                             + (", ".join(given) or "none"))
        if self.factory is not None and self.weights is None:
            raise ValueError("'factory' needs 'weights' (a .safetensors file or a state dict .pt/.pth)")
        if self.pickle is not None and not self.allow_pickle:
            raise ValueError("'pickle' loads a whole pickled module, which executes code from the file; "
                             "set 'allow_pickle: true' if you trust it")
        return self


class DataSource(_Section):
    """A data file (.npz/.npy/.csv/.parquet) or a Python callable yielding batches."""

    path: Optional[RecipePath] = None
    callable: Optional[str] = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    columns: Optional[dict[str, Union[str, list[str]]]] = None
    samples: Optional[int] = Field(None, ge=1)
    seed: int = 0
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSource":
        if (self.path is None) == (self.callable is None):
            raise ValueError("give exactly one of 'path' or 'callable'")
        return self


class CalibrationConfig(DataSource):
    """Calibration data and the method that turns it into activation ranges."""

    samples: Optional[int] = Field(512, ge=1)
    method: CalibrationMethod = Field(default_factory=MinMax)


class EvaluationConfig(DataSource):
    """Held-out data with labels, used to measure drift."""

    labels: str = "label"
    batch_size: int = Field(256, ge=1)
    group_by: Optional[str] = Field(None, description="input whose value groups rows for ranking (e.g. user_id)")
    segments: list[str] = Field(default_factory=list, description="arrays of segment ids (e.g. cold/warm users)")
    top_k: int = Field(10, ge=1)


class QuantizationConfig(_Section):
    """Post-training static quantization settings."""

    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8"] = "int8"
    op_types: Optional[list[str]] = Field(
        None, description="ONNX op types to quantize statically (default: onnxruntime's full QDQ set)")
    embedding_bits: Literal[8, 4] = Field(
        8, description="x86, arm-tflite, arm-xnnpack: embedding tables per-row INT8, or 4-bit (tables wide enough)")
    keep_input_convs_float: bool = Field(
        True, description="keep fp32 a Conv that reads the model input with a tiny reduction (e.g. 1-channel 3x3)")
    compact_names: bool = Field(
        True, description="ONNX artifacts: rename intermediate tensors t0, t1, ... (2% of a small INT8 file); "
                          "false keeps the quantizer's descriptive names for debugging")


class AttentionHeads(_Section):
    """An attention module with separate q/k/v Linear layers whose whole heads may be removed."""

    module: str
    q: str
    k: str
    v: str
    heads_attribute: str = "num_heads"


def _layer_list(layers: Optional[list[int]]) -> Optional[list[int]]:
    if layers is not None and (layers != sorted(set(layers)) or any(index < 0 for index in layers)):
        raise ValueError(f"encoder layer indices must be distinct, ascending and >= 0, got {layers}")
    return layers


EncoderLayers = Annotated[Optional[list[int]], AfterValidator(_layer_list)]


class VocabularyConfig(_Section):
    """Encoders: keep the token-embedding rows of tokens the distillation and calibration texts use."""

    min_count: int = Field(1, ge=1, description="keep tokens seen at least this often in the distillation and "
                           "calibration texts (the tokenizer's special tokens always stay)")
    max_tokens: Optional[int] = Field(None, ge=2, description="at most this many, the most frequent")


class PruneConfig(_Section):
    """Structured pruning: torch-pruning's dependency graph to a MACs/params `ratio`, or, for a Hugging Face
    encoder (model.huggingface), whole attention heads, FFN channels and layers (edgepack.text.prune)."""

    ratio: Optional[float] = Field(None, gt=0.0, lt=1.0, description="fraction of MACs or parameters to remove "
                                   "(not for model.huggingface: use heads, ffn, layers)")
    by: Literal["macs", "params"] = "macs"
    importance: Literal["l1", "l2", "taylor", "group_magnitude"] = "l2"
    global_pruning: bool = False
    steps: int = Field(1, ge=1, le=20)
    round_to: Optional[int] = Field(8, ge=1)
    ignore: list[str] = Field(default_factory=list)
    max_layer_ratio: float = Field(0.9, gt=0.0, le=1.0)
    attention: list[AttentionHeads] = Field(default_factory=list)
    heads: float = Field(0.0, ge=0.0, lt=1.0, description="encoders: fraction of each layer's attention heads to "
                         "remove (the same count in every layer, chosen per layer by importance)")
    ffn: float = Field(0.0, ge=0.0, lt=1.0, description="encoders: fraction of each layer's FFN channels to remove")
    layers: EncoderLayers = Field(None, min_length=1, description="encoders: indices of the layers to keep "
                                  "(default: all)")
    vocabulary: Optional[VocabularyConfig] = Field(None, description="encoders: trim the token table to the "
                                                   "tokens the data uses; other ids read as [UNK]")

    @property
    def encoder(self) -> bool:
        """Whether the encoder fields (heads, ffn, layers, vocabulary) are used."""
        return self.heads > 0 or self.ffn > 0 or self.layers is not None or self.vocabulary is not None


class LowRankConfig(_Section):
    """Truncated-SVD factorization of Linear layers, the rank keeping `energy` of the spectrum."""

    energy: float = Field(0.95, gt=0.0, lt=1.0)
    min_features: int = Field(64, ge=2, description="only layers at least this wide on both sides")


class AssistantConfig(_Section):
    """Teacher assistant of an encoder: pruned from the teacher by these fractions and layers, distilled from
    it, then pruned to the `prune` section's student and distilled into it (Mirzadeh et al. 2020)."""

    heads: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the teacher's heads it removes")
    ffn: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the teacher's FFN channels it removes")
    layers: EncoderLayers = Field(None, min_length=1, description="teacher layers it keeps (default: all)")
    epochs: Optional[int] = Field(None, ge=1, description="its distillation epochs (default: distill.epochs)")


class DistillConfig(DataSource):
    """Knowledge distillation from the float model (teacher) into the pruned student."""

    labels: Optional[str] = None
    batch_size: int = Field(64, ge=1)
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the distillation term vs label loss")
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear: warm up over the first 6% of the steps, then decay to 0 (transformers)")
    time_budget_s: float = Field(300.0, gt=0.0)
    patience: int = Field(3, ge=1)
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    features: list[tuple[str, str]] = Field(default_factory=list,
                                            description="(student module, teacher module) pairs to match")
    feature_weight: float = Field(1.0, ge=0.0)
    hidden_states: float = Field(0.0, ge=0.0, description="encoders: weight of the hidden-state MSE (TinyBERT)")
    attentions: float = Field(0.0, ge=0.0, description="encoders: weight of the attention-map KL (MiniLM)")
    layer_map: EncoderLayers = Field(None, min_length=1, description="encoders: teacher layer matched by each "
                                     "student layer (default: the layer it was pruned from)")
    assistant: Optional[AssistantConfig] = Field(None, description="encoders: distill this intermediate model "
                                                 "from the teacher first, then the student from it")


class LatencyConfig(_Section):
    """How latency is measured."""

    batch_size: int = Field(64, ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(20, ge=1)
    threads: int = Field(2, ge=1)
    max_seconds: float = Field(20.0, gt=0, description="stop timing one batch size after this many seconds (at "
                               "least 3 timed runs); the manifest records how many ran")


class TunedTarget(_Section):
    """How one target is built, as `edgepack tune` chose it: a recipe fragment that reproduces the choice
    without searching (`tuned: {x86: {...}}`)."""

    method: Optional[CalibrationMethod] = Field(None, description="calibration method for this target (default: "
                                                "the recipe's calibration.method)")
    bias_correction: bool = Field(False, description="sequential bias correction of Conv/Linear layers on the "
                                  "calibration data, on the torch side, before the target quantizes")
    float_modules: list[str] = Field(default_factory=list, description="qualified names of Conv/Linear modules "
                                     "kept in float, each with the activation that follows it")
    smooth_quant: Optional[float] = Field(None, ge=0.0, le=1.0, description="SmoothQuant migration strength "
                                          "alpha: activation outliers moved into the weights of the Linear/1x1 Conv "
                                          "layers where that is exact, on the torch side, before bias correction")
    smooth_quant_mul: bool = Field(False, description="with smooth_quant: also smooth the layers whose producer "
                                   "cannot absorb 1/s exactly (post-LayerNorm residuals, GELU outputs) through an "
                                   "explicit per-channel Mul before the layer")


class TuneConfig(_Section):
    """How `edgepack tune` (and `pack` with `auto: true`) searches for the cheapest configuration that meets
    the budget. It never looks at the evaluation data: candidates are scored on a held-out part of the
    calibration data, and the rest calibrates them."""

    auto: bool = Field(False, description="pack: search each quantizing target's configuration first")
    holdout: float = Field(0.4, gt=0.0, lt=0.9, description="fraction of the calibration samples held out to "
                           "score candidates against the float model")
    correction_samples: int = Field(128, ge=8, description="calibration samples for bias correction")
    max_float_layers: int = Field(8, ge=0, description="largest contiguous float region tried")
    sensitivity_samples: int = Field(16, ge=4, description="held-out samples for per-layer sensitivity")
    workers: Optional[int] = Field(None, ge=1, description="candidates scored at once in a local process pool "
                                   "(default: 1 on a host with 2 cores or fewer, else half the cores up to 4); "
                                   "`edgepack tune --workers` overrides it")
    ray: Optional[str] = Field(None, min_length=1, description="a running Ray cluster's address, or 'auto', to score "
                               "candidates on (needs the `ray` extra); `edgepack tune --ray` overrides it")


class Recipe(_Section):
    """A validated recipe."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["classification", "ctr", "ranking"] = "classification"
    model: ModelSource
    inputs: list[InputSpec] = Field(min_length=1)
    calibration: CalibrationConfig
    evaluation: EvaluationConfig
    quantization: QuantizationConfig = Field(default_factory=lambda: QuantizationConfig.model_validate({}))
    targets: list[str] = Field(default_factory=lambda: ["x86"], min_length=1)
    target_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    budget: Budget  # when absent, the task's default (edgepack.recipe.budget); ctr and ranking have none
    latency: LatencyConfig = Field(default_factory=lambda: LatencyConfig.model_validate({}))
    prune: Optional[PruneConfig] = None
    lowrank: Optional[LowRankConfig] = None
    distill: Optional[DistillConfig] = None
    text: Optional[TextConfig] = None  # raw text data, tokenized into input_ids and attention_mask
    tune: TuneConfig = Field(default_factory=lambda: TuneConfig.model_validate({}))
    tuned: dict[str, TunedTarget] = Field(default_factory=dict, description="per-target configurations chosen by "
                                          "`edgepack tune`; written by it as a fragment to paste here")
    output: Optional[Path] = None  # relative to the working directory, like --out
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        for name in targets:
            try:
                check_target_name(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets are listed more than once: {targets}")
        return targets

    @model_validator(mode="before")
    @classmethod
    def _task_default_budget(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("budget") is None:
            task = data.get("task", "classification")
            default = TASKS[task].default_budget() if isinstance(task, str) and task in TASKS else None
            data = {**data, "budget": MissingBudget(str(task)) if default is None
                    else default.model_dump(exclude_defaults=True)}
        return data

    @model_validator(mode="before")
    @classmethod
    def _text_inputs(cls, data: Any) -> Any:
        """With a `text` section and no `inputs`, the inputs are the tokenizer's: int64 [batch, max_length]."""
        if isinstance(data, dict) and isinstance(data.get("text"), dict) and "inputs" not in data:
            try:
                max_length = TextConfig.model_validate(data["text"]).max_length
            except ValueError:
                return data  # the field's own validation reports it
            data = {**data, "inputs": text_input_specs(max_length)}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.distill is not None and self.prune is None and self.lowrank is None:
            raise ValueError("'distill' recovers accuracy after compression: it needs 'prune' or 'lowrank'")
        if (self.prune is not None or self.lowrank is not None) and self.model.onnx is not None:
            raise ValueError("'prune' and 'lowrank' need a PyTorch model (factory or pickle), not an ONNX file")
        torch_only = [f"tuned.{name}" for name, entry in self.tuned.items()
                      if entry.bias_correction or entry.float_modules]
        if self.model.onnx is not None and (self.tune.auto or torch_only):
            raise ValueError(f"{'tune.auto' if self.tune.auto else torch_only[0]} works on the PyTorch module (bias "
                             "correction, sensitivity, float modules): it needs model.factory, not an ONNX file")
        for problem in _encoder_compression_problems(self):
            raise ValueError(problem)
        if self.text is not None:
            if self.model.huggingface is None and self.text.tokenizer is None:
                raise ValueError("'text' needs a tokenizer: text.tokenizer (a folder with tokenizer.json) or "
                                 "model.huggingface")
            expected = text_input_specs(self.text.max_length)
            if [spec.model_dump(exclude_defaults=True) for spec in self.inputs] != expected:
                raise ValueError(f"with 'text', inputs must be {list(TEXT_INPUTS)} int64 [batch, "
                                 f"{self.text.max_length}] (or leave 'inputs' out)")
        for target_name in [*self.target_options, *self.tuned]:
            check_target_name(target_name)
        names = [spec.name for spec in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        task = TASKS[self.task]
        budget_problems = task.recipe_problems(self.evaluation.group_by) + self.budget.problems_for(self.task)
        if budget_problems:
            raise ValueError("; ".join(budget_problems))
        if self.evaluation.group_by is not None and self.evaluation.group_by not in names:
            raise ValueError(f"evaluation.group_by '{self.evaluation.group_by}' is not an input; inputs are {names}")
        for section in (self.calibration, self.evaluation):
            for column_input in (section.columns or {}):
                if column_input not in names:
                    raise ValueError(f"columns maps unknown input '{column_input}'; inputs are {names}")
        return self

    @property
    def base_dir(self) -> Path:
        """Folder of the recipe file: relative paths and local modules are found from here."""
        return self._base_dir

    @property
    def input_names(self) -> list[str]:
        """Names of the model inputs, in order."""
        return [spec.name for spec in self.inputs]


def _encoder_compression_problems(recipe: "Recipe") -> list[str]:
    """Where the recipe's prune/distill fields do not fit its model (encoder fields only for huggingface)."""
    prune, distill, encoder_model = recipe.prune, recipe.distill, recipe.model.huggingface is not None
    problems = []
    if encoder_model and recipe.lowrank is not None:
        problems.append("lowrank: not supported for a Hugging Face model; use prune.heads, prune.ffn, prune.layers")
    if prune is not None and encoder_model:
        if prune.ratio is not None:
            problems.append("prune.ratio: a Hugging Face encoder is pruned by prune.heads, prune.ffn and prune.layers")
        elif not prune.encoder:
            problems.append("prune: give prune.heads, prune.ffn, prune.layers or prune.vocabulary for a Hugging Face "
                            "encoder")
    if prune is not None and not encoder_model:
        if prune.encoder:
            problems.append("prune.heads, prune.ffn, prune.layers, prune.vocabulary: only for model.huggingface; use "
                            "prune.ratio")
        elif prune.ratio is None:
            problems.append("prune.ratio: required (fraction of MACs or parameters to remove)")
    if distill is not None and not encoder_model:
        used = [name for name in ("hidden_states", "attentions", "layer_map", "assistant")
                if getattr(distill, name) not in (None, 0.0)]
        if used:
            problems.append(f"distill.{used[0]}: only for model.huggingface (use distill.features)")
    if distill is not None and encoder_model and distill.features:
        problems.append("distill.features: not for a Hugging Face encoder; use distill.hidden_states and "
                        "distill.attentions")
    assistant = distill.assistant if distill is not None else None
    if assistant is not None and prune is not None:
        if assistant.heads > prune.heads or assistant.ffn > prune.ffn:
            problems.append("distill.assistant: must be larger than the student: its heads and ffn fractions at "
                            f"most prune.heads {prune.heads:g} and prune.ffn {prune.ffn:g}")
        missing = sorted(set(prune.layers or []) - set(assistant.layers or prune.layers or []))
        if missing:
            problems.append(f"distill.assistant.layers: must include the student's prune.layers; missing {missing}")
    if distill is not None and distill.layer_map is not None and prune is not None and prune.layers is not None \
            and len(distill.layer_map) != len(prune.layers):
        problems.append(f"distill.layer_map: one teacher layer per student layer ({len(prune.layers)}), got "
                        f"{len(distill.layer_map)}")
    return problems
