"""What a prediction is conditioned on: `Cond`, the one seam every layer shares (sources build it, models read it,
the engine and the samplers pass it through). A leaf module: it imports torch only, so the data and engine modules
that hand conditions around do not load diffusers to do it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cond:
    """What a prediction is conditioned on. One batch may mix T2I items and edit items (`has_source`)."""

    text: Tensor  # (B, L, D) float token embeddings
    text_mask: Tensor  # (B, L) bool, True on real tokens
    source: Tensor | None = None  # (B, C, H, W) edit source in model space; rows with has_source False are ignored
    has_source: Tensor | None = None  # (B,) bool; None means "all rows" when source is given, else "no rows"
    category: list[str] | None = None

    def __post_init__(self):
        b = self.text.shape[0]
        if self.text.ndim != 3 or tuple(self.text_mask.shape) != tuple(self.text.shape[:2]):
            raise ValueError(f"text must be (B, L, D) and text_mask (B, L); got {tuple(self.text.shape)} and "
                             f"{tuple(self.text_mask.shape)}")
        if self.has_source is None:
            self.has_source = torch.full((b,), self.source is not None, dtype=torch.bool, device=self.text.device)
        self.has_source = self.has_source.to(torch.bool)
        if self.has_source.shape != (b,):
            raise ValueError(f"has_source must be ({b},), got {tuple(self.has_source.shape)}")
        if self.source is None and bool(self.has_source.any()):
            raise ValueError("has_source marks edit rows but no source was given")
        if self.source is not None and self.source.shape[0] != b:
            raise ValueError(f"source has {self.source.shape[0]} rows, text has {b}")
        if self.category is not None and len(self.category) != b:
            raise ValueError(f"category has {len(self.category)} entries, the batch has {b}")

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def to(self, device) -> Cond:
        """This condition's tensors on `device` (categories stay as they are)."""
        source = None if self.source is None else self.source.to(device)
        return Cond(self.text.to(device), self.text_mask.to(device), source, self.has_source.to(device),
                    self.category)

    def rows(self, sl: slice) -> Cond:
        """The contiguous rows `sl` of this condition (views, no copy): a micro-batch."""
        cats = None if self.category is None else list(self.category[sl])
        src = None if self.source is None else self.source[sl]
        return Cond(self.text[sl], self.text_mask[sl], src, self.has_source[sl], cats)

    def select(self, idx: Tensor) -> Cond:
        """The rows `idx` (a 1-D index tensor) of this condition."""
        cats = None if self.category is None else [self.category[i] for i in idx.tolist()]
        src = None if self.source is None else self.source[idx]
        return Cond(self.text[idx], self.text_mask[idx], src, self.has_source[idx], cats)
