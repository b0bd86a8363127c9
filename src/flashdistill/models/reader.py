"""The world judge's reader network: a small CNN that reads a world image of a known category back into its full
record, and its loading from safetensors.

The world judge needs to know what an image *shows*: which attributes a generated image got right, and which record
to re-render as the nearest clean image. `ReaderNet` is a shared conv trunk and a 64-d bottleneck (also the feature
vector for per-category Fréchet distances), with one small classification head per category; the text `word` is read
as 5 left-aligned character slots over A-Z plus blank. `Reader` runs it on numpy images; `load_reader` loads the
shipped weights (or a file). Its training and accuracy evaluation are `flashdistill.bench.reader`
(`flashdistill judge train-reader | eval-reader`); teacher training
uses its trunk as REPA's target encoder (`flashdistill.teacher.repa`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flashdistill.errors import UserError
from flashdistill.world.schema import SCHEMA

CATEGORIES = tuple(SCHEMA)
SLOTS = 5
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BLANK = len(ALPHABET)  # class index of an empty character slot
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "reader.safetensors"
MAKE_CMD = "flashdistill judge train-reader --out {path}"
FORMAT = "flashdistill-reader-v1"


def head_layout(category: str) -> list[tuple[str, int]]:
    """(head name, number of classes) of a category; `word` becomes the slots word_0..word_4."""
    heads = []
    for attr, values in SCHEMA[category].items():
        if attr == "word":
            heads += [(f"word_{k}", BLANK + 1) for k in range(SLOTS)]
        else:
            heads.append((attr, len(values)))
    return heads


def encode_record(record: dict) -> list[int]:
    """Class indices of a record, in head_layout order."""
    labels = []
    for attr, values in SCHEMA[record["category"]].items():
        if attr == "word":
            word = record["word"]
            labels += [ALPHABET.index(word[k]) if k < len(word) else BLANK for k in range(SLOTS)]
        else:
            labels.append(values.index(record[attr]))
    return labels


@dataclass
class ReaderConfig:
    channels: tuple[int, int, int] = (32, 64, 96)
    hidden: int = 256
    feature_dim: int = 64
    head_hidden: int = 128


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ReaderNet(nn.Module):
    """Shared trunk (3 stages of two 3x3 convs at 32, 16, 8 px) -> flatten (keeps where things are: the letter
    slots and layouts are positional) -> 64-d bottleneck -> one MLP head per category over all its attributes."""

    def __init__(self, config: ReaderConfig | None = None):
        super().__init__()
        self.config = cfg = config or ReaderConfig()
        c1, c2, c3 = cfg.channels
        self.trunk = nn.Sequential(*_conv(3, c1), *_conv(c1, c1), nn.MaxPool2d(2), *_conv(c1, c2), *_conv(c2, c2),
                                   nn.MaxPool2d(2), *_conv(c2, c3), *_conv(c3, c3), nn.MaxPool2d(2), nn.Flatten())
        self.neck = nn.Sequential(nn.Linear(c3 * 16, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden, cfg.feature_dim))
        self.heads = nn.ModuleDict({
            cat: nn.Sequential(nn.Linear(cfg.feature_dim, cfg.head_hidden), nn.ReLU(inplace=True),
                               nn.Linear(cfg.head_hidden, sum(n for _, n in head_layout(cat))))
            for cat in CATEGORIES})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [0, 1] -> (B, 64): the bottleneck every head reads, so it carries the whole record."""
        return self.neck(self.trunk(x - 0.5))

    def logits(self, feats: torch.Tensor, category: str) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        flat = self.heads[category](feats)
        for name, n in head_layout(category):
            out[name] = flat[:, start:start + n]
            start += n
        return out

    def forward(self, x: torch.Tensor, category: str) -> dict[str, torch.Tensor]:
        return self.logits(self.features(x), category)


# ------------------------------------------------------------------------------------------------ inference


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, R, R, 3) floats in [0, 1] -> (B, 3, 32, 32). R a multiple of 32 is box-filtered down (a render at R is a
    32-px render with each pixel drawn s x s); 16 px is repeated up (the reader was trained on 2x low-res)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise UserError(f"reader input must be (B, R, R, 3) images, got shape {images.shape}")
    r = images.shape[1]
    if r == 16:
        images = images.repeat(2, axis=1).repeat(2, axis=2)
    elif r % 32 == 0 and r > 32:
        f = r // 32
        images = images.reshape(len(images), 32, f, 32, f, 3).mean(axis=(2, 4))
    elif r != 32:
        raise UserError(f"reader input resolution {r} must be 16 or a multiple of 32")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).clamp(0.0, 1.0)


class Reader:
    """A ReaderNet in eval mode with numpy in/out, batched (`batch` images per forward), float32, no grad."""

    def __init__(self, net: ReaderNet, metadata: dict | None = None, batch: int = 256):
        self.net = net.eval()
        self.metadata = metadata or {}
        self.batch = batch

    @torch.no_grad()
    def _run(self, images: np.ndarray, category: str | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if category is not None and category not in SCHEMA:
            raise UserError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})")
        x = _to_tensor(images)
        feats, probs = [], {}
        for i in range(0, len(x), self.batch):
            f = self.net.features(x[i:i + self.batch])
            feats.append(f.numpy())
            if category is not None:
                for name, z in self.net.logits(f, category).items():
                    probs.setdefault(name, []).append(F.softmax(z, dim=1).numpy())
        dim = self.net.config.feature_dim
        feats_out = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        return feats_out, {k: np.concatenate(v) for k, v in probs.items()}

    def predict_proba(self, images: np.ndarray, category: str) -> dict[str, np.ndarray]:
        """attr -> (B, n_values) probabilities in SCHEMA value order; the word as word_0..word_4, each (B, 27) over
        A-Z then blank."""
        return self._run(images, category)[1]

    def predict(self, images: np.ndarray, category: str) -> list[dict]:
        """Full records: schema values (counts are ints); the word is the read letters with blanks removed."""
        probs = self.predict_proba(images, category)
        n = len(next(iter(probs.values()))) if probs else 0
        idx = {name: p.argmax(axis=1) for name, p in probs.items()}
        records = []
        for b in range(n):
            rec = {"category": category}
            for attr, values in SCHEMA[category].items():
                if attr == "word":
                    slots = (int(idx[f"word_{k}"][b]) for k in range(SLOTS))
                    rec["word"] = "".join(ALPHABET[c] for c in slots if c != BLANK)
                else:
                    rec[attr] = values[int(idx[attr][b])]
            records.append(rec)
        return records

    def features(self, images: np.ndarray) -> np.ndarray:
        """(B, 64) float32 bottleneck features (the same space for every category)."""
        return self._run(images, None)[0]


_DEFAULT_READER: Reader | None = None


def load_reader(path: str | None = None) -> Reader:
    """Load a reader from safetensors (config in the metadata). The default shipped reader is cached."""
    global _DEFAULT_READER
    if path is None and _DEFAULT_READER is not None:
        return _DEFAULT_READER
    target = Path(path) if path is not None else DEFAULT_PATH
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(str(target))
        with safe_open(str(target), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        if metadata.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        cfg = json.loads(metadata["config"])
        net = ReaderNet(ReaderConfig(**{**cfg, "channels": tuple(cfg["channels"])}))
        net.load_state_dict(state)
    except Exception as exc:  # missing, truncated or foreign file: one line that says how to make it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"reader weights {target} are missing or unreadable ({reason}); make them with: "
                        f"{MAKE_CMD.format(path=target)}") from None
    reader = Reader(net, metadata)
    if path is None:
        _DEFAULT_READER = reader
    return reader
