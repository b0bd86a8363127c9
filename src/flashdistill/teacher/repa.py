"""REPA for the embedded teachers: align the transformer's hidden states with the reader network's features.

REPA (Yu et al., "Representation Alignment for Generation: Training Diffusion Transformers Is Easier Than You
Think", ICLR 2025) adds to the denoising loss a term that pulls the hidden states of an early block, seen through a
small MLP head, toward the features a pretrained encoder gives the *clean* image, token by token:

    L_repa = - mean_{rows, tokens} cos( head(h_j(z_t, t, c))_n , y(x)_n )

It reports the same FID in many times fewer steps, because the network no longer has to discover a good
representation of the data on its own. Here the pretrained encoder is the world judge's reader (`models/reader.py`),
a CNN trained to read every attribute and letter of a world image: its conv trunk holds exactly the structure a
teacher must draw. Its feature map is taken at the stage whose grid matches the token grid (8x8 after the third
stage for 4-px patches, 16x16 after the second for 2-px patches; a finer map is average-pooled to the token grid).
The reader is trained on its own seed namespace and stays frozen: no gradient reaches it and none flows from it
into the image, only into the teacher's hidden states. The head is discarded at export.

Used by `teacher/train.py` when `repa.weight > 0`; see `RepaSection` in `teacher/config.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class ReaderFeatures(nn.Module):
    """Frozen reader trunk: clean images in model space (B, 3, R, R) -> (B, g·g, C) target features on a g x g grid."""

    def __init__(self, grid: int, reader_net: nn.Module | None = None):
        super().__init__()
        if reader_net is None:
            from flashdistill.models.reader import load_reader

            reader_net = load_reader().net
        self.trunk = reader_net.trunk.eval().requires_grad_(False)
        self.grid = int(grid)
        sizes = self._stage_sizes()
        usable = [i for i, (size, _) in enumerate(sizes) if size >= self.grid]
        if not usable:
            raise ValueError(f"no reader stage is as fine as the {grid}x{grid} token grid (stages: {sizes})")
        self.stage = usable[-1]  # the deepest stage that is still at least as fine as the token grid
        self.dim = sizes[self.stage][1]

    @torch.no_grad()
    def _stage_sizes(self) -> list[tuple[int, int]]:
        return [(f.shape[-1], f.shape[1]) for f in self._stages(torch.zeros(1, 3, 32, 32))]

    def _stages(self, x: Tensor) -> list[Tensor]:
        """The feature map before each max-pool of the trunk: one per stage."""
        out = []
        for layer in self.trunk:
            if isinstance(layer, nn.MaxPool2d):
                out.append(x)
            if isinstance(layer, nn.Flatten):
                break
            x = layer(x)
        return out

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        self.trunk.eval()
        # The reader reads [0, 1] images and centres them itself (features(x) = trunk(x - 0.5)): x01 - 0.5 = x / 2.
        if x.shape[-1] != 32:  # the reader works at 32 px; larger renders are box-filtered, as the judge does
            x = F.adaptive_avg_pool2d(x, 32)
        fmap = self._stages(x.float() / 2)[self.stage]  # (B, C, S, S)
        if fmap.shape[-1] != self.grid:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, g·g, C), row-major like the packed tokens


class RepaHead(nn.Module):
    """The projection MLP of REPA: hidden width `width` -> `dim` reader channels (three layers, SiLU)."""

    def __init__(self, width: int, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


def repa_loss(head: RepaHead, hidden: Tensor, target: Tensor) -> Tensor:
    """- mean cosine similarity between head(hidden) (B, N, D) and the target features (B, N, C)."""
    return -F.cosine_similarity(head(hidden.float()), target, dim=-1).mean()
