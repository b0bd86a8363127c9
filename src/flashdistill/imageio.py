"""Image files and labelled grids. Images in memory are float32 (H, W, 3) arrays in [0, 1]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flashdistill.errors import UserError


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def quantize(img: np.ndarray) -> np.ndarray:
    """What a saved PNG holds, as floats: models' outputs are judged after this, so a resumed run sees the same."""
    return to_uint8(img).astype(np.float32) / 255.0


def save_png(path: str | Path, img: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(to_uint8(img)).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_png(path: str | Path, resolution: int | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if resolution is not None and im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.BICUBIC)
            return np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read image ({e})") from None


def grid(rows: list[list[np.ndarray]], scale: int = 4, row_labels: list[str] | None = None,
         cell_labels: list[list[str]] | None = None, label_width: int = 0,
         col_labels: list[str] | None = None) -> np.ndarray:
    """Tile rows of equal-size images (upscaled `scale`x, nearest) with optional text labels: a header line per
    column (`col_labels`), a label left of each row, a caption under each cell. Returns uint8."""
    h, w = rows[0][0].shape[:2]
    cell_w, cell_h, pad = w * scale, h * scale, 4
    text_h = 12 if cell_labels else 0
    head_h = 14 if col_labels else 0
    ncol = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_width + ncol * (cell_w + pad) + pad,
                               head_h + len(rows) * (cell_h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        draw.text((label_width + pad + j * (cell_w + pad), 2), label[: cell_w // 6], fill=(0, 0, 0))
    for i, row in enumerate(rows):
        y = head_h + pad + i * (cell_h + text_h + pad)
        if row_labels:
            draw.text((4, y + cell_h // 2 - 6), row_labels[i], fill=(0, 0, 0))
        for j, img in enumerate(row):
            x = label_width + pad + j * (cell_w + pad)
            canvas.paste(Image.fromarray(to_uint8(img)).resize((cell_w, cell_h), Image.NEAREST), (x, y))
            if cell_labels and cell_labels[i][j]:
                draw.text((x, y + cell_h + 1), cell_labels[i][j][: cell_w // 6], fill=(0, 0, 0))
    return np.asarray(canvas)


def save_grid(path: str | Path, *args, **kwargs) -> None:
    save_png(path, grid(*args, **kwargs).astype(np.float32) / 255.0)
