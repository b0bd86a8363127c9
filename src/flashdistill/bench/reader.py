"""Training and accuracy evaluation of the world judge's reader (the network: `flashdistill.models.reader`).

The reader is trained on renders from a seed namespace of its own ([7, category, i], disjoint from the train
[0, ...] and bench [1, ...] splits) with random degradations (noise, blur, colour shift, low resolution, low
contrast), so it also reads imperfect generated images and degraded oracles.

Run:
    flashdistill judge train-reader --out src/flashdistill/assets/reader.safetensors
    flashdistill judge eval-reader [--n 1000]
"""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flashdistill.models.reader import ALPHABET, CATEGORIES, FORMAT, SLOTS, Reader, ReaderNet, encode_record
from flashdistill.world.render import render
from flashdistill.world.schema import SCHEMA, sample_record

TRAIN_NS, EVAL_NS = (7,), 8  # seed namespaces of the reader's own training and evaluation renders
RANDOM_WORD_SHARE = 0.25  # share of training text records whose word is a random A-Z string (reads letters, not words)


# ------------------------------------------------------------------------------------------------ data


def _record(category: str, ns: tuple, i: int, random_word_share: float) -> dict:
    rng = np.random.default_rng([*ns, CATEGORIES.index(category), i])
    record = sample_record(category, rng, held_out=None)
    if category == "text" and rng.random() < random_word_share:
        # The renderer draws any A-Z string; random ones make the slots read letters instead of memorising words.
        record["word"] = "".join(ALPHABET[c] for c in rng.integers(0, 26, int(rng.integers(1, SLOTS + 1))))
    return record


def _render_chunk(args: tuple) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    category, ns, start, stop, share = args
    records = [_record(category, ns, i, share) for i in range(start, stop)]
    images = np.stack([np.round(render(r) * 255).astype(np.uint8) for r in records])
    return images, np.array([encode_record(r) for r in records], np.int64), records


def render_set(category: str, ns: tuple, n: int, share: float = 0.0, workers: int = 1):
    """Render records [ns, category, 0..n) once: uint8 (n, 32, 32, 3) images, (n, heads) labels, the records."""
    chunks = [(category, ns, s, min(n, s + 2000), share) for s in range(0, n, 2000)]
    if workers > 1 and len(chunks) > 1:
        # fork where there is one: train_reader renders before torch starts its thread pool, so the copy is safe, and
        # unlike spawn it needs no `if __name__ == "__main__"` guard in the caller's script.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            parts = pool.map(_render_chunk, chunks)
    else:
        parts = [_render_chunk(c) for c in chunks]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [r for p in parts for r in p[2]])


# ------------------------------------------------------------------------------------------------ augmentation


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image, replicate padding (as ops.blur's mode='nearest')."""
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, K): one kernel per image channel
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def augment(x: torch.Tensor, gen: torch.Generator, share: float = 0.6) -> torch.Tensor:
    """Degrade a random `share` of the batch with random combinations of the judge's degradations (plus a small
    colour shift, as generated images drift in colour). x: (B, 3, 32, 32) in [0, 1]."""
    pick = torch.nonzero(torch.rand(len(x), generator=gen) < share).flatten()
    if len(pick) == 0:
        return x
    x, y, n = x.clone(), x[pick], len(pick)
    ops = torch.rand(n, 5, generator=gen) < torch.tensor([0.5, 0.35, 0.4, 0.2, 0.45])
    none, col = ~ops.any(1), torch.randint(0, 5, (n,), generator=gen)
    ops[none, col[none]] = True  # every picked image gets at least one degradation
    colour, contrast, blur, low, noise = ops.T
    gain, offset = _uniform(n, 0.94, 1.06, gen, 3, 1, 1), _uniform(n, -0.04, 0.04, gen, 3, 1, 1)
    y = torch.where(colour[:, None, None, None], y * gain + offset, y)
    g = _uniform(n, 0.4, 1.0, gen)[:, None, None, None]
    y = torch.where(contrast[:, None, None, None], 0.5 + (y - 0.5) * g, y)
    if blur.any():
        y[blur] = _blur(y[blur], _uniform(int(blur.sum()), 0.3, 1.6, gen))
    two = torch.rand(n, generator=gen) < 0.6
    for f, rows in ((2, low & two), (4, low & ~two)):
        if rows.any():
            y[rows] = F.interpolate(F.avg_pool2d(y[rows], f), scale_factor=f, mode="nearest")
    std = _uniform(n, 0.01, 0.12, gen)[:, None, None, None]
    y = torch.where(noise[:, None, None, None], y + std * torch.randn(y.shape, generator=gen), y)
    x[pick] = y.clamp(0.0, 1.0)
    return x


# ------------------------------------------------------------------------------------------------ training


def _loss(net: ReaderNet, x: torch.Tensor, labels: list[torch.Tensor], per_cat: int) -> torch.Tensor:
    """Mean over categories of the summed head cross-entropies; the batch holds `per_cat` images of each."""
    feats = net.features(x)
    total = 0.0
    for j, cat in enumerate(CATEGORIES):
        logits = net.logits(feats[j * per_cat:(j + 1) * per_cat], cat)
        total = total + sum(F.cross_entropy(z.float(), labels[j][:, h]) for h, z in enumerate(logits.values()))
    return total / len(CATEGORIES)


def _save(net: ReaderNet, out: Path, metadata: dict) -> None:
    """Atomic write: a reader never sees a half-written file, and a crash leaves the old one in place."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.chmod(tmp, 0o644)  # a shipped asset: readable by whoever installs the package
    os.replace(tmp, out)


def train_reader(out: str, steps: int = 5000, batch_size: int = 144, seed: int = 0,
                 n_train_per_category: int = 24000, log_every: int = 250, lr: float = 2e-3,
                 workers: int = 2, bf16: bool = True) -> dict:
    """Render a training set once, train a ReaderNet with augmentations, write it to `out` (safetensors)."""
    from tqdm import tqdm

    t0 = time.time()
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    per_cat = max(1, batch_size // len(CATEGORIES))
    data = []
    for cat in CATEGORIES:
        imgs, labels, _ = render_set(cat, TRAIN_NS, n_train_per_category, RANDOM_WORD_SHARE, workers)
        data.append((torch.from_numpy(imgs), torch.from_numpy(labels)))
    render_s = time.time() - t0
    net = ReaderNet().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    gen = torch.Generator().manual_seed(seed)
    history, bar = [], tqdm(range(steps), desc="train reader", unit="step", mininterval=2.0)
    for step in bar:
        idx = [torch.randint(0, len(d[0]), (per_cat,), generator=gen) for d in data]
        x = torch.cat([d[0][i] for d, i in zip(data, idx)]).permute(0, 3, 1, 2).float() / 255.0
        x = augment(x, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _loss(net.train(), x, [d[1][i] for d, i in zip(data, idx)], per_cat)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 2.0)
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, round(loss.item(), 5)))
            bar.set_postfix(loss=f"{loss.item():.4f}")
    wall = time.time() - t0
    args = dict(steps=steps, batch_size=batch_size, seed=seed, n_train_per_category=n_train_per_category,
                log_every=log_every, lr=lr, workers=workers, bf16=bf16)
    n_params = sum(p.numel() for p in net.parameters())
    metadata = {"format": FORMAT, "config": json.dumps(asdict(net.config)), "train_args": json.dumps(args),
                "command": f"flashdistill judge train-reader --out {out} --steps {steps} --seed {seed}",
                "seed": seed, "steps": steps, "params": n_params, "wall_time_s": round(wall, 1),
                "render_time_s": round(render_s, 1), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    _save(net, Path(out), metadata)
    return {"out": str(out), "params": n_params, "steps": steps, "seed": seed, "wall_time_s": round(wall, 1),
            "render_time_s": round(render_s, 1), "final_loss": history[-1][1] if history else None,
            "loss_history": history}


# ------------------------------------------------------------------------------------------------ evaluation


def _degrade_all(images: np.ndarray, degrade: dict | None, offset: int) -> np.ndarray:
    from flashdistill.world.ops import degrade as apply

    if not degrade:
        return images
    seed = int(degrade.get("seed", 0))
    # each image its own noise seed, so a whole set does not share one noise pattern
    return np.stack([apply(img, {**degrade, "seed": seed * 1_000_003 + offset + i}) for i, img in enumerate(images)])


def evaluate_reader(reader: Reader, n_per_category: int = 1000, seed: int = 12345,
                    degrade: dict | None = None) -> dict:
    """Accuracy on fresh renders ([8, seed, category, i]; any combination), optionally degraded with an ops.degrade
    spec such as {"type": "blur", "strength": 1.0}. Word accuracy is exact whole-word match."""
    result = {"n_per_category": n_per_category, "seed": seed, "degrade": degrade, "categories": {}}
    worst = 1.0
    for c, cat in enumerate(CATEGORIES):
        records = [_record(cat, (EVAL_NS, seed), i, 0.0) for i in range(n_per_category)]
        images = _degrade_all(np.stack([render(r) for r in records]), degrade, c * n_per_category)
        preds = reader.predict(images, cat)
        accs = {attr: float(np.mean([p[attr] == r[attr] for p, r in zip(preds, records)])) for attr in SCHEMA[cat]}
        if cat == "text":
            slots = [(p["word"].ljust(SLOTS), r["word"].ljust(SLOTS)) for p, r in zip(preds, records)]
            result["word_accuracy"] = accs["word"]
            result["char_accuracy"] = float(np.mean([a[k] == b[k] for a, b in slots for k in range(SLOTS)]))
        result["categories"][cat] = accs
        worst = min([worst] + [v for k, v in accs.items() if k != "word"])
    result["min_attribute_accuracy"] = worst
    return result


EVAL_SUITE = {"clean": None, "blur 1.0": {"type": "blur", "strength": 1.0},
              "noise 0.1": {"type": "noise", "strength": 0.1, "seed": 0}}


def accuracy_table(reader: Reader, n_per_category: int = 1000, seed: int = 12345) -> tuple[str, dict]:
    """Markdown table of every attribute's accuracy under the clean / blur 1.0 / noise 0.1 suite, and the results."""
    results = {name: evaluate_reader(reader, n_per_category, seed, spec) for name, spec in EVAL_SUITE.items()}
    lines = ["| category | attribute | " + " | ".join(results) + " |", "|---|---|" + "---|" * len(results)]
    for cat in CATEGORIES:
        for attr in SCHEMA[cat]:
            cells = " | ".join(f"{100 * r['categories'][cat][attr]:.2f}%" for r in results.values())
            lines.append(f"| {cat} | {attr}{' (whole word)' if attr == 'word' else ''} | {cells} |")
    for key in ("char_accuracy", "min_attribute_accuracy"):
        lines.append(f"| all | {key} | " + " | ".join(f"{100 * r[key]:.2f}%" for r in results.values()) + " |")
    return "\n".join(lines), results
