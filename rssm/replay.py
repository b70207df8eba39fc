"""Replay buffer of transitions with uniform sampling of fixed-length sequences."""

from __future__ import annotations

import numpy as np


class Replay:
    """A ring buffer of `capacity` transitions.

    Sequences are windows of consecutive transitions and may cross episode boundaries: `is_first` marks
    where the model state is reset. The first step of every sampled window is marked `is_first` too, since
    the model starts each window from its initial state.
    """

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.data: dict[str, np.ndarray] = {}
        self.ptr = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, transition: dict[str, np.ndarray]) -> None:
        if not self.data:  # allocate on first use, when shapes and dtypes are known
            self.data = {k: np.zeros((self.capacity, *np.shape(v)), np.asarray(v).dtype)
                         for k, v in transition.items()}
        for k, v in transition.items():
            self.data[k][self.ptr] = v
        self.ptr = (self.ptr + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.data.values())

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """Uniformly sampled windows: each field becomes (batch_size, length, ...)."""
        if self.size < length:
            raise ValueError(f"replay holds {self.size} transitions, fewer than a sequence of {length}")
        # Valid windows never run across the write pointer, where old and new data meet.
        oldest = self.ptr if self.size == self.capacity else 0
        starts = oldest + self.rng.integers(0, self.size - length + 1, batch_size)  # (B,)
        idx = (starts[:, None] + np.arange(length)) % self.capacity  # (B, T)
        batch = {k: v[idx] for k, v in self.data.items()}
        batch["is_first"][:, 0] = True
        return batch
