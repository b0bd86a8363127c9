"""Image files and labelled grids. Images in memory are float32 (H, W, 3) arrays in [0, 1].

Every image a user names (an edit source of a data file, a bench case's `source_image`, `edit --image`) is opened
by `open_rgb` (or checked, header only, by `image_size`): a missing file, a file that is no image, an image PIL
refuses as a decompression bomb (over 2 x PIL.Image.MAX_IMAGE_PIXELS) and an image of more than 8 bits per channel
are each a UserError naming the file. High bit depth (16-bit greyscale `I;16`, 32-bit `I`, float `F`) is refused,
not converted: PIL's conversion to RGB clips every value above 255 (a 16-bit photo turns white), and the right
mapping to 8 bits (full 16-bit range, 12-bit data in a 16-bit container, linear or gamma) is the user's to choose,
e.g. `convert SRC -depth 8 OUT.png`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
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


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes of more than 8 bits per channel


@contextmanager
def _opened(path: str | Path, what: str):
    """The PIL image of `path`, opened lazily (header read); every failure a UserError naming `what` and the file."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: " + ("is a folder, not a file" if path.is_dir() else "no such file"))
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise UserError(f"{what} {path}: PIL refuses to open it as a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:  # SyntaxError: some broken headers
        raise UserError(f"{what} {path}: cannot be read as an image ({' '.join(str(err).split())[:160]})") from None
    with img:
        if img.mode in HIGH_DEPTH_MODES:
            raise UserError(f"{what} {path}: an image of more than 8 bits per channel (PIL mode {img.mode}, e.g. "
                            f"16-bit greyscale); flashdistill reads 8-bit images: convert it to 8-bit RGB first")
        if min(img.size) < 1:
            raise UserError(f"{what} {path}: the image is {img.size[0]}x{img.size[1]} pixels")
        yield img


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(width, height) of an image file, checked as `open_rgb` checks it, without decoding the pixels."""
    with _opened(path, what) as img:
        return img.size


def open_rgb(path: str | Path, what: str = "image"):
    """The image of `path` as an RGB PIL image, fully decoded (see the module docstring for what is refused)."""
    with _opened(path, what) as img:
        try:
            img.load()
            return img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt pixel data
            raise UserError(f"{what} {path}: cannot be read as an image ({' '.join(str(err).split())[:160]})") \
                from None


def load_png(path: str | Path, resolution: int | None = None, what: str = "image") -> np.ndarray:
    im = open_rgb(path, what)
    if resolution is not None and im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


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
