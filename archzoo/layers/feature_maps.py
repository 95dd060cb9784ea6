"""Feature maps phi for linear attention, applied per head to (B, T, H, feature_dim) queries and keys.

- identity: phi(x) = x. Not positive, so the normaliser phi(q) z can vanish (see the kernel).
- elu: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs").
- relu: phi(x) = relu(x).
- taylor: BASED's second-order Taylor expansion of exp(q.k / sqrt(d)) (Arora et al. 2024, "Simple
  linear attention language models balance the recall-throughput tradeoff"):
  phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))], so that
  phi(q).phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d). Output dim 1 + d + d^2.
- hedgehog: a learned per-head linear map W (initialised to the identity) followed by
  [softmax(x W), softmax(-x W)] over the feature dim (Zhang et al. 2024, "The Hedgehog & the
  Porcupine"; the form LoLCATs uses). Output dim 2 d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.based_attention.naive import taylor_features


class IdentityMap(nn.Module):
    @staticmethod
    def out_dim(feature_dim: int) -> int:
        return feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EluPlusOne(IdentityMap):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x) + 1.0


class ReLUMap(IdentityMap):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class TaylorExp(nn.Module):
    """BASED: phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(d), the Taylor series of exp(s)."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim

    @staticmethod
    def out_dim(feature_dim: int) -> int:
        return 1 + feature_dim + feature_dim**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return taylor_features(x)


class Hedgehog(nn.Module):
    """Learned softmax feature map: [softmax(x W_h), softmax(-x W_h)] with one W_h per head, W_h = I at init."""

    def __init__(self, n_heads: int, feature_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_heads, feature_dim, feature_dim))  # (H, d, d)
        self.init_weights()

    @staticmethod
    def out_dim(feature_dim: int) -> int:
        return 2 * feature_dim

    def init_weights(self) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.weight.shape[-1]).expand_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("bthf,hfg->bthg", x, self.weight)  # (B, T, H, d)
        return torch.cat([x.softmax(-1), (-x).softmax(-1)], dim=-1)


FEATURE_MAPS: dict[str, type[nn.Module]] = {
    "identity": IdentityMap,
    "elu": EluPlusOne,
    "relu": ReLUMap,
    "taylor": TaylorExp,
    "hedgehog": Hedgehog,
}


def _cls(name: str) -> type[nn.Module]:
    if name not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {name!r}; expected one of {', '.join(FEATURE_MAPS)}")
    return FEATURE_MAPS[name]


def feature_map_dim(name: str, feature_dim: int) -> int:
    """Dimension of phi(x) for an x of ``feature_dim`` dims: the state's F."""
    return _cls(name).out_dim(feature_dim)


def build_feature_map(name: str, n_heads: int, feature_dim: int) -> nn.Module:
    cls = _cls(name)
    if cls is TaylorExp:
        return TaylorExp(feature_dim)
    if cls is Hedgehog:
        return Hedgehog(n_heads, feature_dim)
    return cls()
