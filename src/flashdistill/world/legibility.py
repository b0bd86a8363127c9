"""How legible the text category's words are at a resolution: the measurement behind the default of 32 px.

For N four-letter text records per resolution, the sign is rendered, degraded (Gaussian blur of 0.6 px and noise
of std 0.1, the order of a generator's errors), and each letter is read back by template matching against the same
scene with that letter replaced by each of the 26 letters. A word is legible when all four letters are read right.
Letters, not whole words, are matched: a word can be guessed from a blur of its shape, a letter cannot.
"""

from __future__ import annotations

import string

import numpy as np

from flashdistill.world import ops
from flashdistill.world.font import WORDS
from flashdistill.world.render import render
from flashdistill.world.schema import sample_record


def _read_word(rec: dict, seen: np.ndarray, r: int) -> bool:
    word = rec["word"]
    for j in range(len(word)):
        candidates = [word[:j] + ch + word[j + 1:] for ch in string.ascii_uppercase]
        templates = np.stack([render({**rec, "word": w}, r) for w in candidates])
        if candidates[int(np.abs(templates - seen).mean(axis=(1, 2, 3)).argmin())] != word:
            return False
    return True


def measure(n: int = 200, resolutions: tuple[int, ...] = (16, 32, 48), seed: int = 5) -> list[dict]:
    four = [w for w in WORDS if len(w) == 4]
    rows = []
    for r in resolutions:
        rng = np.random.default_rng([9, seed])
        correct = 0
        for i in range(n):
            rec = {**sample_record("text", rng, held_out=None), "word": four[int(rng.integers(len(four)))]}
            seen = ops.add_noise(ops.blur(render(rec, r), 0.6), 0.1, seed=i)
            correct += _read_word(rec, seen, r)
        glyph = "5x7" if r >= 32 else f"{5 * r / 32:g}x{7 * r / 32:g}"
        rows.append({"resolution": r, "glyph_px": glyph, "word_accuracy": correct / n, "n": n})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| resolution | glyph (w x h px) | 4-letter words read letter by letter | n |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['resolution']} | {row['glyph_px']} | {row['word_accuracy']:.1%} | {row['n']} |")
