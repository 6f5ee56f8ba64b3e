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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F


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
    def __init__(self, spec: ModelSpec, num_classes: int):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.embed_dim, num_classes)

    def forward(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(features, n_frames)))

    def embed(self, features: torch.Tensor, n_frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(features, n_frames)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
