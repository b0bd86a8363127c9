"""`flashdistill world sample`: a PNG of world renders with their captions (T2I categories) or of edit cases as
source | exact target pairs with their instructions (edit categories)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw

from flashdistill.errors import UserError
from flashdistill.imageio import save_png, to_uint8
from flashdistill.world.categories import T2I_CATEGORIES
from flashdistill.world.edits import source_image, target_image
from flashdistill.world.pools import edit_item, t2i_item
from flashdistill.world.render import check_resolution, render

CELL = 128  # each image is shown at 128 px, nearest-neighbour
TEXT_W = 420


def _rows(category: str, n: int, split: str, start: int, resolution: int):
    for index in range(start, start + n):
        if category in T2I_CATEGORIES:
            item = t2i_item(category, index, split)
            yield [render(item.record, resolution)], item.prompt
        else:
            item = edit_item(category, index, split)
            yield ([source_image(item.source, item.edit, resolution), target_image(item.source, item.edit,
                                                                                  resolution)], item.instruction)


def sample_grid(category: str, n: int, out: str, split: str = "train", start: int = 0, resolution: int = 32) -> None:
    if n < 1 or n > 200:
        raise UserError(f"--n {n}: choose between 1 and 200")
    check_resolution(resolution)
    rows = list(_rows(category, n, split, start, resolution))
    ncol = len(rows[0][0])
    canvas = Image.new("RGB", (ncol * (CELL + 4) + TEXT_W, n * (CELL + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (images, text) in enumerate(rows):
        y = 4 + r * (CELL + 4)
        for c, img in enumerate(images):
            canvas.paste(Image.fromarray(to_uint8(img)).resize((CELL, CELL), Image.NEAREST), (4 + c * (CELL + 4), y))
        wrapped = textwrap.fill(text, width=66)[:700]
        draw.multiline_text((ncol * (CELL + 4) + 8, y + 4), wrapped, fill=(0, 0, 0))
    save_png(out, np.asarray(canvas, np.float32) / 255.0)
