"""Tiny 5x7 bitmap font and word list for the embedded world's text category.

The synthetic "text" category needs words that stay legible in a 32 px image.
A 5-wide glyph with one column of spacing makes a 5-letter word exactly
``5*5 + 4*1 = 29`` px wide at scale 1, so any word in :data:`WORDS` fits in
32 px; larger scales give bigger signs/posters in larger canvases.

The glyphs in :data:`GLYPHS` are our own hand-drawn dot-matrix design (not
copied from any font file). Each glyph is 7 rows of 5 characters, ``'#'`` for
ink and ``'.'`` for empty; every pair of glyphs differs in at least 3 pixels
(see :func:`_min_pair_distance`, which is asserted at import).

API:
    GLYPHS                       dict letter -> tuple of 7 strings of width 5
    WORDS                        sorted tuple of common uppercase 3-5 letter words
    glyph_array(ch)              -> bool array (7, 5)
    word_mask(word, scale, spacing) -> bool array (7*scale, word_width(...))
    word_width(n_letters, scale, spacing) -> int
"""

from __future__ import annotations

import numpy as np

GLYPH_W = 5
GLYPH_H = 7

# fmt: off
GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}
# fmt: on

# Common everyday words for signs and posters: uppercase A-Z, 3-5 letters,
# unique, sorted; every letter of the alphabet occurs in at least 3 words.
# fmt: off
WORDS: tuple[str, ...] = (
    "ACT", "ADD", "AGE", "AIR", "ALL", "ANT", "APPLE", "ARM", "ART", "ASK", "AXE",
    "BAG", "BAKE", "BALL", "BAND", "BANK", "BARN", "BASE", "BATH", "BEACH", "BEAN",
    "BEAR", "BED", "BEE", "BELL", "BELT", "BENCH", "BIKE", "BIRD", "BLACK", "BLUE",
    "BOAT", "BOOK", "BOOT", "BOWL", "BOX", "BREAD", "BRICK", "BROWN", "BUS", "CAB",
    "CAFE", "CAKE", "CALM", "CAMP", "CANDY", "CAP", "CAR", "CARD", "CART", "CAT",
    "CHAIR", "CHALK", "CHESS", "CITY", "CLAY", "CLEAN", "CLIMB", "CLOCK", "CLOUD",
    "COAST", "COAT", "COIN", "COLD", "COOK", "CORN", "COW", "CROWN", "CUP", "DAISY",
    "DANCE", "DARK", "DAY", "DEER", "DESK", "DISH", "DOG", "DOOR", "DREAM", "DRINK",
    "DRUM", "DUCK", "EAGLE", "EAR", "EARTH", "EAST", "EASY", "EGG", "EXIT", "EXTRA",
    "FACE", "FARM", "FAST", "FENCE", "FERN", "FIELD", "FIRE", "FISH", "FIX", "FLAG",
    "FLOOR", "FLOUR", "FOG", "FOOD", "FORK", "FOX", "FROG", "FROST", "FRUIT", "GAME",
    "GATE", "GIFT", "GLASS", "GLOVE", "GOAT", "GOLD", "GRAPE", "GRASS", "GRAY", "GREEN",
    "HALL", "HAND", "HAT", "HEART", "HILL", "HOME", "HONEY", "HORSE", "HOTEL", "HOUSE",
    "ICE", "ICON", "INDEX", "INK", "ISLE", "JAM", "JAR", "JAZZ", "JEANS", "JELLY",
    "JET", "JEWEL", "JOB", "JOG", "JOIN", "JOKE", "JOY", "JUICE", "JUMP", "KEY", "KICK",
    "KING", "KITE", "KIWI", "KNOT", "LAKE", "LAMP", "LEAF", "LEARN", "LEMON", "LIGHT",
    "LION", "LOG", "LUNCH", "MANGO", "MAP", "MEAL", "MENU", "MILK", "MINT", "MIX",
    "MOON", "MOUSE", "MUSIC", "NAIL", "NEST", "NET", "NEWS", "NIGHT", "NORTH", "NOTE",
    "OAK", "OCEAN", "OIL", "OLIVE", "OPEN", "ORBIT", "OVEN", "OWL", "PAINT", "PAPER",
    "PARK", "PARTY", "PATH", "PEACH", "PEAR", "PEN", "PIANO", "PIE", "PINK", "PIXEL",
    "PIZZA", "PLANT", "PLATE", "PLUM", "POOL", "QUACK", "QUAIL", "QUEEN", "QUEST",
    "QUICK", "QUIET", "QUILT", "QUIZ", "QUOTE", "RADIO", "RAIN", "READ", "RED", "RELAX",
    "RING", "RIVER", "ROAD", "ROCK", "ROOF", "ROSE", "RUG", "SAIL", "SALE", "SALT",
    "SAND", "SEA", "SEED", "SHELF", "SHIP", "SHOE", "SHOP", "SIX", "SKY", "SMILE",
    "SNOW", "SOAP", "SOCK", "SOFA", "SOUP", "SOUTH", "SPOON", "STAR", "STONE", "STOP",
    "STORM", "SUGAR", "SUN", "SWIM", "TABLE", "TAXI", "TEA", "TENT", "TIGER", "TOAST",
    "TOOL", "TOWEL", "TOWN", "TOY", "TRAIN", "TREE", "TRUCK", "VALUE", "VALVE", "VAN",
    "VASE", "VEST", "VIEW", "VINE", "VIVID", "VOICE", "VOTE", "WATER", "WAVE", "WAX",
    "WEST", "WHEEL", "WHITE", "WIND", "WOLF", "WOOD", "WORD", "WORK", "WRITE", "YARD",
    "YARN", "YEAR", "YOGA", "YOLK", "ZEBRA", "ZERO", "ZEST", "ZINC", "ZIP", "ZONE",
    "ZOO", "ZOOM",
)
# fmt: on


def _glyph_bits(ch: str) -> tuple[bool, ...]:
    return tuple(c == "#" for row in GLYPHS[ch] for c in row)


def _min_pair_distance() -> int:
    """Smallest Hamming distance (in pixels) between any two glyphs."""
    letters = sorted(GLYPHS)
    bits = {ch: _glyph_bits(ch) for ch in letters}
    best = GLYPH_W * GLYPH_H
    for i, a in enumerate(letters):
        for b in letters[i + 1:]:
            d = sum(x != y for x, y in zip(bits[a], bits[b]))
            best = min(best, d)
    return best


def _check_font() -> None:
    assert sorted(GLYPHS) == [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for ch, rows in GLYPHS.items():
        assert len(rows) == GLYPH_H, ch
        assert all(len(r) == GLYPH_W and set(r) <= {"#", "."} for r in rows), ch
    assert _min_pair_distance() >= 3


_check_font()

_GLYPH_ARRAYS: dict[str, np.ndarray] = {}


def glyph_array(ch: str) -> np.ndarray:
    """Bool array (7, 5) for an uppercase letter A-Z (True = ink). Returns a copy."""
    key = ch.upper()
    if key not in GLYPHS:
        raise KeyError(f"no glyph for {ch!r}; only letters A-Z are supported")
    arr = _GLYPH_ARRAYS.get(key)
    if arr is None:
        arr = np.array([[c == "#" for c in row] for row in GLYPHS[key]], dtype=bool)
        arr.setflags(write=False)
        _GLYPH_ARRAYS[key] = arr
    return arr.copy()


def word_width(n_letters: int, scale: int = 1, spacing: int = 1) -> int:
    """Pixel width of an ``n_letters`` word: ``(5*n + spacing*(n-1)) * scale``."""
    if n_letters <= 0:
        return 0
    return (GLYPH_W * n_letters + spacing * (n_letters - 1)) * scale


def word_mask(word: str, scale: int = 1, spacing: int = 1) -> np.ndarray:
    """Render ``word`` as a bool mask of shape ``(7*scale, word_width(len(word), scale, spacing))``.

    Letters are separated by ``spacing`` empty columns (scaled); scaling is
    nearest-neighbour by the integer ``scale``.
    """
    scale = int(scale)
    spacing = int(spacing)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if spacing < 0:
        raise ValueError(f"spacing must be >= 0, got {spacing}")
    n = len(word)
    base = np.zeros((GLYPH_H, word_width(n, 1, spacing)), dtype=bool)
    for i, ch in enumerate(word):
        x = i * (GLYPH_W + spacing)
        base[:, x:x + GLYPH_W] = glyph_array(ch)
    if scale > 1:
        base = np.repeat(np.repeat(base, scale, axis=0), scale, axis=1)
    return base
