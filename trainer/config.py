"""Typed, validated job configs for ``lanser-train`` (pydantic; every field described), and
loading them from YAML plus ``--set`` overrides.

    >>> from trainer.config import build_config
    >>> cfg = build_config("pretrain", {"data": {"root": "out", "taxonomy": "ekman"}, "output_dir": "runs/pt"})
    >>> cfg.scaling.num_workers, cfg.train.label_mode
    (1, 'hard')
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator, model_validator

from trainer.errors import ConfigError, JobConfigError  # noqa: F401 - ConfigError: what load_config raises, for callers

if TYPE_CHECKING:
    from trainer.encoders import PretrainedSpec
    from trainer.features import FeatureSpec
    from trainer.model import ModelSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class _TaxonomySection(_Section):
    @field_validator("taxonomy", check_fields=False)
    @classmethod
    def _taxonomy_loads(cls, value: str) -> str:
        from labeler.taxonomy import TaxonomyError, load_taxonomy

        try:
            load_taxonomy(value)
        except TaxonomyError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return value


# --------------------------------------------------------------------------- data


class LabelsData(_TaxonomySection):
    """The labeler's weak-labels table (``<root>/labels/taxonomy=../taxonomy_version=../run_id=..``)."""

    kind: Literal["labels"] = Field("labels", description="a lanser labels table")
    root: str = Field(description="the labeler's output root (local path or URI), the directory holding labels/ and runs/")
    taxonomy: str = Field(description="taxonomy name (shipped: ekman, iemocap4, goemotions) or path of its YAML; sets the class head")
    taxonomy_version: str | None = Field(None, description="taxonomy_version partition to read; null = the taxonomy file's version")
    run_id: str | None = Field(
        None, description="committed labeler run to read (runs/<run_id>.json says status: committed); null = the newest committed run of this taxonomy version"
    )
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="drop labeled rows whose confidence (top score) is below this")
    val_fraction: float = Field(0.1, gt=0.0, le=0.5, description="share of utterances held out for validation (stable hash of utt_id)")
    audio_root: str | None = Field(None, description="directory that relative URIs in the table are relative to; null = the launch directory")
    cache_features: bool = Field(
        False,
        description="decode + log-mel every utterance once and keep its whole-utterance features in Ray's object store for all epochs "
        "(a fresh random crop per epoch; 25.6 KB per second of audio at 64 mels, spilled to disk beyond the object store); "
        "for tables whose audio fits, e.g. ~0.1 GB per 1,000 clips of 4 s; with model.encoder: pretrained the waveform is cached "
        "instead (64 KB per second of audio)",
    )


class CorpusData(_TaxonomySection):
    """A labeled emotion corpus in its published layout, or a generic manifest."""

    kind: Literal["ravdess", "crema-d", "iemocap", "manifest"] = Field(
        description="ravdess | crema-d | iemocap (published layouts) | manifest (CSV/Parquet/JSONL with uri, label, optional speaker, utt_id, split)"
    )
    path: str = Field(description="the corpus root directory, or the manifest file")
    taxonomy: str = Field("iemocap4", description="taxonomy the corpus classes are mapped onto (sets the class head)")
    label_map: dict[str, str | None] = Field(
        default_factory=dict,
        description="overrides of the built-in class mapping: corpus class -> taxonomy label, or null to drop it (e.g. {calm: neutral})",
    )
    test_groups: list[str] | None = Field(
        None, description="speakers (RAVDESS Actor_NN, CREMA-D 1001..) or sessions (IEMOCAP Session5) held out for test; null = test_fraction of them"
    )
    val_groups: list[str] | None = Field(None, description="groups held out for validation; null = val_fraction of the rest")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of groups for test when test_groups is null")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of groups for validation when val_groups is null")
    seed: int = Field(0, description="seed of the group split and of training-set subsampling")
    include_song: bool = Field(False, description="RAVDESS only: also use the sung recordings (vocal channel 02)")
    cache_features: bool = Field(
        True,
        description="decode + log-mel every clip once and keep its whole-clip features in Ray's object store for all epochs "
        "(a fresh random crop per epoch; 25.6 KB per second of audio at 64 mels, 64 KB of waveform for a pretrained encoder); "
        "labeled corpora are small enough",
    )


_DATA_KINDS = {"labels", "ravdess", "crema-d", "iemocap", "manifest"}
DataConfig = Annotated[Union[LabelsData, CorpusData], Field(discriminator="kind")]


# --------------------------------------------------------------------------- training


class FeatureConfig(_Section):
    n_mels: int = Field(64, ge=8, le=256, description="mel bands")
    win_ms: float = Field(25.0, gt=0, le=100, description="STFT window, milliseconds")
    hop_ms: float = Field(10.0, gt=0, le=50, description="STFT hop, milliseconds")
    fmin: float = Field(20.0, ge=0, description="lowest mel edge, Hz")
    fmax: float | None = Field(None, gt=0, le=8000, description="highest mel edge, Hz; null = 8000 (Nyquist at 16 kHz)")
    max_seconds: float = Field(
        4.0, gt=0, le=60, description="clips are cropped (training: random window) or zero-padded to this length; 4 s: the clips of emotion corpora and the labeler's utterances are mostly 2-6 s"
    )
    normalize: Literal["utterance_mean", "none"] = Field("utterance_mean", description="subtract each mel band's mean over the clip")

    def spec(self, kind: str = "log_mel") -> FeatureSpec:
        """The features for ``kind``: ``log_mel`` (the ResNet) or ``waveform`` (a pretrained
        encoder, which uses only ``max_seconds``)."""
        from trainer.features import FeatureSpec

        return FeatureSpec(**self.model_dump(), kind=kind)


class ModelConfig(_Section):
    """The compact log-mel ResNet (:mod:`trainer.model`): the default, trained from scratch."""

    encoder: Literal["resnet"] = Field(
        "resnet", description="resnet (default): the compact log-mel ResNet, trained from scratch | pretrained: a self-supervised speech encoder (see its fields)"
    )
    channels: int = Field(
        16, ge=4, le=512, description="channels of the first ResNet stage (doubled per stage); 16 trains on 2 CPU cores in minutes, a GPU affords 32-64"
    )
    blocks: list[int] = Field([2, 2, 2], min_length=1, max_length=6, description="residual blocks per stage")
    embed_dim: int = Field(192, ge=8, le=4096, description="utterance embedding size (what evaluate exports)")
    pooling: Literal["attentive", "meanstd"] = Field("attentive", description="utterance pooling: attentive statistics or plain mean+std")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before the class head")

    @field_validator("blocks")
    @classmethod
    def _blocks_positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("every stage needs at least 1 block")
        return v

    def spec(self, n_mels: int) -> ModelSpec:
        """The model's architecture for inputs of ``n_mels`` mel bands."""
        from trainer.model import ModelSpec

        return ModelSpec(n_mels=n_mels, **{**self.model_dump(exclude={"encoder"}), "blocks": tuple(self.blocks)})


class PretrainedEncoderConfig(_Section):
    """A pretrained self-supervised speech encoder through transformers (:mod:`trainer.encoders`):
    WavLM, HuBERT or wav2vec 2.0, with weighted layer pooling and a small head."""

    encoder: Literal["pretrained"] = Field(description="pretrained: start from a self-supervised speech encoder")
    name_or_path: str | None = Field(
        None,
        description="hub id (e.g. microsoft/wavlm-base-plus, facebook/hubert-base-ls960, facebook/wav2vec2-base) or a local "
        "save_pretrained folder (readable by every training worker); families: wavlm, hubert, wav2vec2. Required, except in "
        "finetune with init_checkpoint, whose encoder is used",
    )
    freeze: bool = Field(
        True, description="true: the backbone's weights stay as published (eval mode, no gradient: cheap); false: fine-tune them at encoder_lr"
    )
    freeze_feature_encoder: bool = Field(
        True, description="with freeze: false, keep the CNN feature encoder fixed and fine-tune only the transformer layers (the usual practice)"
    )
    encoder_lr: float | None = Field(
        None, gt=0, le=1.0, description="learning rate of the backbone's weights when freeze is false; null = optim.lr (a tenth of it or less is usual)"
    )
    embed_dim: int = Field(256, ge=8, le=4096, description="utterance embedding size after the layer mix and mean pooling (what evaluate exports)")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before the class head")
    normalize: bool | None = Field(
        None, description="zero-mean unit-variance input per clip; null = as the model's preprocessor_config.json (do_normalize) says"
    )

    @field_validator("name_or_path")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        from trainer.encoders import check_reference

        return v if v is None else check_reference(v)

    def spec(self, n_mels: int | None = None) -> PretrainedSpec:
        """The encoder's spec before the model is read (:func:`trainer.encoders.resolve_spec`
        fills in its family and configuration); ``n_mels`` is unused: it reads the waveform."""
        from trainer.encoders import PretrainedSpec

        return PretrainedSpec(**self.model_dump(exclude={"encoder"}))


def _model_kind(value: Any) -> str:
    kind = value.get("encoder", "resnet") if isinstance(value, dict) else getattr(value, "encoder", "resnet")
    return kind if kind in ("resnet", "pretrained") else "unknown"


ModelSection = Annotated[
    Union[Annotated[ModelConfig, Tag("resnet")], Annotated[PretrainedEncoderConfig, Tag("pretrained")]],
    Discriminator(_model_kind, custom_error_type="encoder", custom_error_message="encoder must be resnet or pretrained"),
]


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0, le=1.0, description="peak AdamW learning rate")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    warmup_epochs: int = Field(1, ge=0, description="linear warm-up epochs before the cosine decay")
    grad_clip: float | None = Field(5.0, gt=0, description="max gradient norm; null = no clipping")


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1, description="epochs (full passes over the training split)")
    batch_size: int = Field(32, ge=1, description="utterances per batch per worker")
    label_mode: Literal["hard", "soft"] = Field("hard", description="hard: top-1 label; soft: the stored score distribution as target")
    soft_temperature: float = Field(1.0, gt=0, description="soft targets are scores^(1/T), renormalized: T < 1 sharpens, T > 1 flattens")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing for hard labels")
    class_weighting: Literal["none", "balanced"] = Field("none", description="balanced: weight each class by total / (classes x count)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 autocast on GPUs that support it, fp16 on older ones, fp32 on CPU")
    shuffle_buffer: int = Field(256, ge=0, description="rows in each worker's local shuffle buffer (0 = no shuffling)")
    seed: int = Field(0, description="model initialization seed")


class _ComputeSection(_Section):
    use_gpu: bool = Field(False, description="one GPU per model replica (training worker or inference actor)")
    data_cpus: float = Field(1.0, gt=0, description="CPUs per decode + log-mel task (Ray Data map_batches)")
    data_batch_size: int = Field(16, ge=1, description="clips per decode + log-mel task batch")


class ScalingConfig(_ComputeSection):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on a cluster); mixed precision on GPUs")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per training worker (fractions allowed)")
    torch_threads: int | Literal["auto"] = Field(
        "auto",
        description="torch intra-op threads per CPU training worker; auto = the cores this worker can run on "
        "(os.sched_getaffinity) shared evenly among the training workers on its node, at least cpus_per_worker rounded up "
        "and at most the cores it can run on",
    )
    prefetch_batches: int = Field(
        2, ge=0, le=64, description="batches fetched, cropped and collated ahead of the training step in a background thread (0 = none)"
    )
    keep_freed_memory: bool = Field(
        True,
        description="Linux/glibc: keep freed memory in the training process (mallopt M_TRIM_THRESHOLD / M_MMAP_THRESHOLD) "
        "instead of unmapping and re-faulting the big batch and activation buffers every step; a no-op elsewhere",
    )

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> int | str:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024):
            return v
        raise ValueError("must be auto or a whole number of threads from 1 to 1024")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="more Ray resources per worker, e.g. {GPU: 0.5} to share GPUs or a custom node resource; CPU is cpus_per_worker"
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _resources(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x < 0 or k == "CPU"}
        if bad:
            raise ValueError(f"amounts must be >= 0 and CPU is set by cpus_per_worker; not {bad}")
        return v


class CheckpointConfig(_Section):
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept (best by metric; the latest is always kept too, for resuming)")
    metric: Literal["val_ua", "val_wa", "val_macro_f1", "val_loss"] = Field("val_ua", description="validation metric that ranks checkpoints")

    @property
    def mode(self) -> str:
        return "min" if self.metric == "val_loss" else "max"


class RayConfig(_Section):
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started when RAY_ADDRESS is unset; null = all")


class _JobConfig(_Section):
    output_dir: str = Field(description="local directory for the report, plots and exported embeddings")
    ray: RayConfig = Field(default_factory=RayConfig, description="local Ray settings (ignored when RAY_ADDRESS is set)")
    progress: bool = Field(True, description="show Ray Data progress bars (--no-progress sets false)")

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty path")
        return v


class _TrainJobConfig(_JobConfig):
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelSection = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    storage_path: str | None = Field(None, description="where Ray Train keeps checkpoints (local path, s3://, gs://); null = <output_dir>/checkpoints")
    name: str = Field(description="run name under storage_path; rerunning the same command resumes it")
    resume: bool = Field(True, description="resume from the latest checkpoint of a run with this name; false = refuse to reuse the name")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be letters, digits and _ . = - (no slashes), got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _features_fit_the_model(cls, v: Any, info: ValidationInfo) -> Any:
        features = info.data.get("features")
        unused = sorted((features.model_fields_set - {"max_seconds"}) if features is not None else ())
        if isinstance(v, PretrainedEncoderConfig) and unused:
            raise ValueError(
                f"a pretrained encoder reads the 16 kHz waveform: features.{', features.'.join(unused)} would be unused; "
                "set only features.max_seconds"
            )
        return v

    @model_validator(mode="after")
    def _encoder_named(self) -> "_TrainJobConfig":
        if isinstance(self.model, PretrainedEncoderConfig) and self.model.name_or_path is None and not getattr(self, "init_checkpoint", None):
            raise ValueError("model.name_or_path: required for encoder: pretrained (a hub id or a local folder)")
        return self

    def storage(self) -> str:
        return self.storage_path or os.path.join(os.path.abspath(self.output_dir), "checkpoints")

    def feature_spec(self) -> FeatureSpec:
        """Log-mel for the ResNet, the waveform for a pretrained encoder."""
        return self.features.spec("waveform" if isinstance(self.model, PretrainedEncoderConfig) else "log_mel")


class PretrainConfig(_TrainJobConfig):
    """``lanser-train pretrain``: train on a weak-labels table."""

    data: LabelsData
    name: str = Field("pretrain", description="run name under storage_path; rerunning the same command resumes it")


class FinetuneConfig(_TrainJobConfig):
    """``lanser-train finetune``: train on a labeled corpus, optionally from a pretrained encoder."""

    name: str = Field("finetune", description="run name under storage_path; rerunning the same command resumes it")
    init_checkpoint: str | None = Field(
        None, description="pretrained checkpoint (a checkpoint directory, or a run's output_dir holding report.json); its encoder, model and feature settings are used"
    )
    freeze_encoder: bool = Field(False, description="train only the new class head (a linear probe)")
    train_fraction: float = Field(1.0, gt=0, le=1, description="class-stratified share of the training split to use")


class SweepConfig(FinetuneConfig):
    """``lanser-train sweep``: label-efficiency sweep, pretrained vs from scratch."""

    name: str = Field("sweep", description="prefix of the run names of the sweep's fine-tunes")
    init_checkpoint: str = Field(description="the weak-label-pretrained checkpoint compared against training from scratch")
    fractions: list[float] = Field([0.01, 0.05, 0.1, 0.25, 1.0], min_length=1, description="shares of the labeled training split")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="repeat every fine-tune once per seed (it sets data.seed: which clips a fraction keeps, and train.seed: "
        "initialization and shuffling; the train/val/test split stays data.seed's) and report mean, sd, min and max; "
        "null = once, with data.seed and train.seed as given",
    )

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0 < f <= 1]
        if bad:
            raise ValueError(f"every fraction must be in (0, 1]; {bad} are not")
        return sorted(set(v))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must differ from each other; got {v}")
        return v


class InferenceConfig(_ComputeSection):
    concurrency: int = Field(1, ge=1, description="model replicas (Ray Data actors)")
    cpus: float = Field(1.0, gt=0, description="CPUs per replica")
    batch_size: int = Field(32, ge=1, description="clips per inference batch")


class EvaluateConfig(_JobConfig):
    """``lanser-train evaluate``: metrics of a checkpoint on a split; optional embedding export."""

    checkpoint: str = Field(description="a checkpoint directory, or a run's output_dir holding report.json (its best checkpoint)")
    data: DataConfig
    split: Literal["train", "val", "test", "all"] = Field("test", description="which split of data to evaluate on")
    embeddings: bool = Field(False, description="also write <output_dir>/embeddings/ (Parquet: utt_id, embedding list<float32>, label, split)")
    inference: InferenceConfig = Field(default_factory=InferenceConfig)


CONFIGS: dict[str, type[_JobConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "sweep": SweepConfig,
    "evaluate": EvaluateConfig,
}


# --------------------------------------------------------------------------- loading


def _format_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    if len(loc) > 1 and loc[0] == "data" and loc[1] in _DATA_KINDS:
        del loc[1]  # the discriminated union's tag, not a field
    if len(loc) > 1 and loc[0] == "model" and loc[1] in ("resnet", "pretrained"):
        del loc[1]  # the model union's tag, not a field
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names the fields
        return msg
    field = ".".join(loc)
    if err["type"] == "missing":
        return f"{field}: required field is missing"
    if err["type"] == "extra_forbidden":
        return f"{field}: unknown field (got {err['input']!r})"
    return f"{field}: {msg} (got {err['input']!r})"


def build_config(command: str, data: dict[str, Any], source: str = "config") -> _JobConfig:
    """Validate a parsed config for ``command``; raises :class:`~trainer.errors.JobConfigError`
    listing every problem."""
    if command not in CONFIGS:
        raise JobConfigError([f"unknown command {command!r} (allowed: {sorted(CONFIGS)})"], source)
    if not isinstance(data, dict):
        raise JobConfigError([f"a config must be a mapping of fields, got {type(data).__name__}"], source)
    try:
        return CONFIGS[command].model_validate(data)
    except ValidationError as exc:
        raise JobConfigError([_format_error(e) for e in exc.errors()], source) from None


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"`` (the labeler's rule; raises
    :class:`ConfigError` when a part of the key is not a section)."""
    from labeler.config import set_dotted

    set_dotted(data, key, value)


def parse_set(item: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is read as YAML (the
    labeler's ``--set`` rule; raises :class:`ConfigError` for anything but ``key=value``)."""
    from labeler.config import parse_override

    return parse_override(item)


def load_config(command: str, path: str | None, overrides: list[tuple[str, Any]] = ()) -> _JobConfig:
    """Read a YAML config (optional), apply ``(key, value)`` overrides, validate. Every
    failure is a :class:`ConfigError`."""
    from labeler.config import read_yaml_mapping

    data = read_yaml_mapping(path) if path else {}
    for key, value in overrides:
        apply_override(data, key, value)
    return build_config(command, data, path or "command line")
