"""State for incremental decoding: a KV cache per attention subblock, conv + SSM state per Mamba-2 mixer.

``Cache(n_layers)`` holds one ``LayerCache`` per block; tensors are allocated on first use (batch, dtype and
device come from the activations) and K/V buffers grow by doubling, so a decode step writes in place
instead of concatenating. ``model(ids, cache=cache)`` feeds new tokens after the ones already cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVCache:
    """Keys and values of one attention subblock: buffers (B, H_kv, capacity, D), ``length`` of them used."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` (B, H_kv, T, D); return all keys and values so far (B, H_kv, length, D)."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            capacity = max(end, 2 * (self.k.shape[2] if self.k is not None else 128))
            self.k, self.v = self._grow(self.k, k, capacity), self._grow(self.v, v, capacity)
        assert self.k is not None and self.v is not None
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, old: torch.Tensor | None, like: torch.Tensor, capacity: int) -> torch.Tensor:
        new = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])  # (B, H_kv, capacity, D)
        if old is not None:
            new[:, :, : self.length] = old[:, :, : self.length]
        return new


class MambaCache:
    """A Mamba-2 mixer's state: the last ``kernel - 1`` conv inputs (B, C, K-1) and the SSM state (B, H, P, N)."""

    def __init__(self) -> None:
        self.conv: torch.Tensor | None = None
        self.ssm: torch.Tensor | None = None
        self.length = 0


@dataclass
class LayerCache:
    kv: KVCache = field(default_factory=KVCache)
    mamba: MambaCache = field(default_factory=MambaCache)


class Cache:
    """Decoding state of a whole model; ``length`` counts the tokens fed so far."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.length = 0

    def __getitem__(self, index: int) -> LayerCache:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)
