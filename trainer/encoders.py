"""A pretrained self-supervised speech encoder (WavLM, HuBERT, wav2vec 2.0) loaded through
transformers, with weighted layer pooling and a small head: the SER model practitioners
start from, as an alternative to the log-mel ResNet. This module holds its spec, the
checks of a model reference and the loading; the torch modules are
:class:`trainer.model.PretrainedSER` and :class:`trainer.model.PretrainedEncoder`.

Architecture (the SUPERB recipe for emotion recognition)::

    16 kHz waveform (1 x T samples, zero-padded; n_frames = real samples)
      -> zero-mean unit-variance over the real samples (when the model's feature
         extractor says do_normalize), as Wav2Vec2FeatureExtractor does
      -> backbone (transformers AutoModel: CNN feature encoder + transformer layers),
         with an attention mask where the model was trained with one
      -> every hidden state (the CNN projection and each layer), mixed with
         softmax-normalised learnable weights
      -> mean over the real frames
      -> linear -> LayerNorm -> ReLU -> embedding (``embed_dim``)  <- what `evaluate` exports
      -> dropout -> linear head (one logit per taxonomy label)

``PretrainedSER.encoder`` is everything up to the embedding (backbone, layer weights,
projection), so fine-tuning and the linear probe treat it as they treat the ResNet's
encoder. The backbone's configuration is kept in :class:`PretrainedSpec` and so in every
checkpoint's ``meta.json``: evaluation, resuming and fine-tuning rebuild the backbone from
it (``AutoModel.from_config``) and load the checkpoint's weights, without the original
folder or the hub.

Neither torch nor transformers is imported at module level: config validation uses the
checks here (``import trainer`` and ``load_config`` stay light).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: model_type values (config.json) of the encoder families supported: same input (raw
#: 16 kHz waveform), same CNN front end and ``_get_feat_extract_output_lengths``.
FAMILIES = ("wavlm", "hubert", "wav2vec2")

#: Why Whisper's encoder is refused, in the words the error gives.
WHISPER_NOT_SUPPORTED = (
    "Whisper's encoder is not supported: transformers' WhisperEncoder only accepts 30-s log-mel windows, "
    "so every 4-s clip would cost a 30-s forward pass; use a wavlm, hubert or wav2vec2 model"
)

#: The sample rate lanser decodes to (labeler.audio.SAMPLE_RATE, without importing the labeler here).
SAMPLE_RATE = 16_000


class EncoderError(ValueError):
    """A pretrained encoder that cannot be used: missing folder, unsupported family,
    a feature extractor at another sample rate. The message is one line."""


def is_local_reference(name_or_path: str) -> bool:
    """A local folder (existing, or written as a path: absolute, ``./``, ``../``, ``~``),
    as opposed to a hub id such as ``microsoft/wavlm-base-plus``."""
    return os.path.exists(os.path.expanduser(name_or_path)) or name_or_path.startswith(("/", "./", "../", "~", "."))


def check_reference(name_or_path: str) -> str:
    """Config-time check of ``model.name_or_path`` without importing transformers: a local
    folder must exist and hold a ``config.json`` of a supported family. Hub ids are checked
    when the job loads them. Raises :class:`EncoderError`."""
    if not name_or_path.strip():
        raise EncoderError("must be a hub id (e.g. microsoft/wavlm-base-plus) or a local folder")
    if not is_local_reference(name_or_path):
        return name_or_path
    path = os.path.expanduser(name_or_path)
    if not os.path.isdir(path):
        raise EncoderError(f"no such folder {name_or_path!r} (a local encoder is a folder written by save_pretrained)")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise EncoderError(f"{name_or_path!r} holds no config.json: not a transformers model folder")
    with open(config, encoding="utf-8") as f:
        check_family(json.load(f).get("model_type"), name_or_path)
    return name_or_path


def check_family(model_type: str | None, where: str) -> str:
    if model_type == "whisper":
        raise EncoderError(f"{where} is a Whisper model: {WHISPER_NOT_SUPPORTED}")
    if model_type not in FAMILIES:
        raise EncoderError(f"{where} is a {model_type!r} model; supported encoder families: {', '.join(FAMILIES)}")
    return model_type


@dataclass(frozen=True)
class PretrainedSpec:
    """What builds a :class:`PretrainedSER` and how it trains; saved in every checkpoint
    (``meta.json``'s ``model``), so it can be rebuilt without the original folder.

    The first fields are those of the job config's ``model`` section (``encoder:
    pretrained``); the last ones are read from the model when the job starts
    (:func:`resolve_spec`)."""

    name_or_path: str
    freeze: bool = True
    freeze_feature_encoder: bool = True
    encoder_lr: float | None = None
    embed_dim: int = 256
    dropout: float = 0.2
    normalize: bool | None = None  # None until resolved from the feature extractor
    # resolved from the model (resolve_spec):
    model_type: str | None = None
    attention_mask: bool | None = None  # pass the attention mask (models trained with one)
    backbone_config: dict[str, Any] = field(default_factory=dict)  # config.to_dict()

    encoder: str = "pretrained"  # the tag that tells a checkpoint's model apart from the ResNet's

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainedSpec":
        return cls(**d)

    @property
    def num_layers(self) -> int:
        """Hidden states pooled: the CNN projection plus one per transformer layer."""
        return int(self.backbone_config["num_hidden_layers"]) + 1


def resolve_spec(spec: PretrainedSpec) -> PretrainedSpec:
    """``spec`` with what the model says filled in: its family, its configuration (kept
    for rebuilding), whether its inputs are normalised (``do_normalize`` of its feature
    extractor, unless the config set ``normalize``) and whether it takes an attention mask
    (``return_attention_mask``; wav2vec2-base style models with group norm take none and
    zero-padded inputs instead). Reads ``config.json`` and ``preprocessor_config.json``
    through transformers (the hub for a hub id). Raises :class:`EncoderError`."""
    from transformers import AutoConfig, AutoFeatureExtractor

    where = spec.name_or_path
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load the encoder config of {where!r}: {str(exc).splitlines()[0]}") from None
    check_family(config.model_type, where)
    normalize, mask = spec.normalize, None
    try:
        extractor = AutoFeatureExtractor.from_pretrained(where)
    except (OSError, ValueError):
        extractor = None
    if extractor is not None:
        rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise EncoderError(f"{where!r} expects {rate} Hz audio; lanser decodes to {SAMPLE_RATE} Hz")
        if normalize is None:
            normalize = bool(getattr(extractor, "do_normalize", True))
        mask = getattr(extractor, "return_attention_mask", None)
    if normalize is None:
        raise EncoderError(
            f"{where!r} has no preprocessor_config.json saying whether its input is normalised; set model.normalize: true or false"
        )
    if mask is None:
        mask = getattr(config, "feat_extract_norm", "layer") == "layer"  # group-norm models were trained without one
    return replace(spec, normalize=normalize, model_type=config.model_type, attention_mask=bool(mask), backbone_config=config.to_dict())


def build_backbone(spec: PretrainedSpec, pretrained_weights: bool) -> nn.Module:
    """The transformers encoder: its pretrained weights from ``name_or_path``
    (``AutoModel.from_pretrained``), or, when a checkpoint will supply the weights, an
    empty model of the saved configuration (``AutoModel.from_config``)."""
    from transformers import AutoConfig, AutoModel

    # The hidden-state mix needs every layer: LayerDrop (skipping random layers in training)
    # would hand it a layer's input as its output.
    overrides = {"layerdrop": 0.0}
    if pretrained_weights:
        try:
            return AutoModel.from_pretrained(spec.name_or_path, **overrides)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot load the encoder {spec.name_or_path!r}: {str(exc).splitlines()[0]}") from None
    settings = {k: v for k, v in spec.backbone_config.items() if k != "model_type"}
    config = AutoConfig.for_model(spec.model_type, **{**settings, **overrides})
    return AutoModel.from_config(config)
