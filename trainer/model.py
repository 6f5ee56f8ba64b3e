"""The SER model: a compact ResNet over log-mel features with statistics pooling.

Architecture (the ResNet speaker/emotion-embedding family, e.g. the r-vector and
ECAPA's attentive statistics pooling)::

    log-mel (1 x n_mels x T)
      -> conv3x3 stem -> stages of residual basic blocks (channels c, 2c, 4c, ...;
         every stage after the first halves frequency and time)
      -> flatten channels x frequency -> frame sequence (D x T')
      -> utterance pooling over the real frames only: mean+std, or attentive mean+std
      -> linear -> embedding (``embed_dim``)         <- what `evaluate` exports
      -> dropout -> linear head (one logit per taxonomy label)

``SERModel.encoder`` is everything up to the embedding; fine-tuning loads it from a
pretrained checkpoint and puts a new head on it sized for the new taxonomy.

The other model kind, :class:`PretrainedSER`, is a pretrained speech encoder (WavLM, HuBERT,
wav2vec 2.0) with weighted layer pooling and a small head (its spec and loading are in
:mod:`trainer.encoders`); :func:`build_model` and :func:`spec_from_dict` build either kind
from its spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from trainer.encoders import PretrainedSpec


@dataclass(frozen=True)
class ModelSpec:
    n_mels: int = 64
    channels: int = 32
    blocks: tuple[int, ...] = (2, 2, 2)
    embed_dim: int = 192
    pooling: str = "attentive"  # or "meanstd"
    dropout: float = 0.2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["blocks"] = tuple(d["blocks"])
        return cls(**d)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class StatsPooling(nn.Module):
    """Mean and standard deviation over the valid frames; attentive when ``attention``
    (a learned softmax weight per frame, as in ECAPA-TDNN)."""

    def __init__(self, dim: int, attention: bool, hidden: int = 128):
        super().__init__()
        self.attention = (
            nn.Sequential(nn.Conv1d(dim, hidden, 1), nn.Tanh(), nn.Conv1d(hidden, 1, 1)) if attention else None
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, D, T); mask: (B, T) bool, at least one True per row.
        m = mask[:, None, :].to(x.dtype)
        if self.attention is not None:
            logits = self.attention(x).masked_fill(~mask[:, None, :], float("-inf"))
            w = torch.softmax(logits.float(), dim=-1).to(x.dtype)
        else:
            w = m / m.sum(dim=-1, keepdim=True)
        mean = (x * w).sum(dim=-1)
        var = ((x - mean[..., None]) ** 2 * w).sum(dim=-1)
        return torch.cat([mean, torch.sqrt(var.clamp_min(1e-5))], dim=1)


class Encoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        c = spec.channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        layers, cin, freq = [], c, spec.n_mels
        self.n_strided = 0
        for i, n_blocks in enumerate(spec.blocks):
            cout = c * 2**i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                if stride == 2:
                    freq = (freq + 1) // 2
                    self.n_strided += 1
                cin = cout
        self.blocks = nn.Sequential(*layers)
        dim = cin * freq
        self.pool = StatsPooling(dim, attention=spec.pooling == "attentive")
        self.proj = nn.Sequential(nn.Linear(2 * dim, spec.embed_dim), nn.LayerNorm(spec.embed_dim), nn.ReLU())

    def forward(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(features[:, None]))  # (B, C, F', T')
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t)
        lengths = n_frames.clamp_min(1)
        for _ in range(self.n_strided):
            lengths = (lengths + 1) // 2  # a 3x3 conv with stride 2 and padding 1 gives ceil(T / 2)
        mask = torch.arange(t, device=x.device)[None, :] < lengths.clamp(max=t)[:, None]
        return self.proj(self.pool(x, mask))


class SERModel(nn.Module):
    """An utterance encoder, dropout and a class head; the encoder is the log-mel ResNet
    (:class:`Encoder`) unless a subclass passes its own."""

    def __init__(self, spec: ModelSpec, num_classes: int, encoder: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.encoder = encoder if encoder is not None else Encoder(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.embed_dim, num_classes)

    def forward(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(features, n_frames)))

    def embed(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(features, n_frames)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: every trainable parameter at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]


def normalize_waveform(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over each row's first ``lengths`` samples, zeros after
    them: ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``, batched."""
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    m = valid.to(x.dtype)
    count = m.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (x * m).sum(dim=1, keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / count
    return ((x - mean) / torch.sqrt(var + 1e-7)) * m


class PretrainedEncoder(nn.Module):
    """A pretrained speech encoder's backbone + weighted layer pooling + projection to the
    utterance embedding (:mod:`trainer.encoders` says how it is built and loaded)."""

    def __init__(self, spec: PretrainedSpec, pretrained_weights: bool):
        from trainer.encoders import build_backbone

        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec, pretrained_weights)
        self.frozen = spec.freeze
        if spec.freeze:
            self.backbone.requires_grad_(False)
        elif spec.freeze_feature_encoder and hasattr(self.backbone, "freeze_feature_encoder"):
            self.backbone.freeze_feature_encoder()
        # Zeros: the mix starts as the plain average of all hidden states.
        self.layer_weights = nn.Parameter(torch.zeros(spec.num_layers))
        hidden = int(spec.backbone_config["hidden_size"])
        self.proj = nn.Sequential(nn.Linear(hidden, spec.embed_dim), nn.LayerNorm(spec.embed_dim), nn.ReLU())
        if self.frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> "PretrainedEncoder":
        """A frozen backbone stays in eval mode (no dropout, no SpecAugment masking), whatever
        the training loop sets."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def layer_mix(self) -> torch.Tensor:
        """The softmax-normalised weight of each hidden state (they sum to 1)."""
        return torch.softmax(self.layer_weights.float(), dim=0)

    def forward(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        # features: (B, 1, T) waveform, zero-padded; n_frames: real samples per row.
        x = features[:, 0]
        lengths = n_frames.clamp_min(1).clamp(max=x.shape[1]).long()
        if self.spec.normalize:
            x = normalize_waveform(x, lengths)
        sample_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        kwargs = {"attention_mask": sample_mask.long()} if self.spec.attention_mask else {}
        with torch.no_grad() if self.frozen else torch.enable_grad():
            hidden = self.backbone(x, output_hidden_states=True, **kwargs).hidden_states
        stacked = torch.stack(hidden, dim=0)  # (L, B, T', H)
        mixed = (self.layer_mix().to(stacked.dtype)[:, None, None, None] * stacked).sum(dim=0)
        frames = self.backbone._get_feat_extract_output_lengths(lengths).clamp(1, mixed.shape[1])
        mask = (torch.arange(mixed.shape[1], device=x.device)[None, :] < frames[:, None]).to(mixed.dtype)
        pooled = (mixed * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        return self.proj(pooled)


class PretrainedSER(SERModel):
    """:class:`SERModel` on a :class:`PretrainedEncoder`, so the recipe, fine-tuning and
    evaluation use either; only its optimizer groups differ."""

    def __init__(self, spec: PretrainedSpec, num_classes: int, pretrained_weights: bool = False):
        super().__init__(spec, num_classes, encoder=PretrainedEncoder(spec, pretrained_weights))

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the head, projection and layer weights at ``lr`` (first, so the
        run's logged ``lr`` is theirs), the trainable backbone weights at ``encoder_lr``."""
        backbone = [p for p in self.encoder.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.spec.encoder_lr or lr})
        return groups


def spec_from_dict(d: dict):
    """The model spec a checkpoint's ``meta.json`` ``model`` holds: a pretrained encoder's
    (``encoder: pretrained``), else the ResNet's (checkpoints of either age)."""
    if d.get("encoder") == "pretrained":
        from trainer.encoders import PretrainedSpec

        return PretrainedSpec.from_dict(d)
    return ModelSpec.from_dict(d)


def build_model(spec, num_classes: int, pretrained_weights: bool = False) -> nn.Module:
    """The model for ``spec``: :class:`SERModel` for a :class:`ModelSpec`, or
    :class:`trainer.encoders.PretrainedSER`, whose backbone gets the pretrained weights from
    its ``name_or_path`` when ``pretrained_weights`` (a fresh run) and otherwise only its
    saved configuration, for a checkpoint's weights to fill."""
    if isinstance(spec, ModelSpec):
        return SERModel(spec, num_classes)
    return PretrainedSER(spec, num_classes, pretrained_weights=pretrained_weights)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
