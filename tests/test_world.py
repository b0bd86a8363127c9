"""The embedded world: determinism, validation, splits, captions, pools and exact edit targets."""

import numpy as np
import pytest

from flashdistill.bench.cases import t2i_bench_cases
from flashdistill.errors import UserError
from flashdistill.world import ops
from flashdistill.world.captions import PHRASES, caption
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES
from flashdistill.world.edits import source_image, target_image, target_record, validate_edit
from flashdistill.world.font import WORDS, word_mask, word_width
from flashdistill.world.pools import edit_item, t2i_item, t2i_pool
from flashdistill.world.render import render
from flashdistill.world.schema import IDENTITY_ATTRS, SCHEMA, is_held_out, sample_record, validate_record


def test_render_is_deterministic_and_sized():
    rng = np.random.default_rng(0)
    for category in T2I_CATEGORIES:
        rec = sample_record(category, rng)
        a, b = render(rec, 32), render(dict(rec), 32)
        assert a.dtype == np.float32 and a.shape == (32, 32, 3)
        assert a.tobytes() == b.tobytes()
        assert 0.0 <= a.min() and a.max() <= 1.0
        for r in (16, 48, 64, 128, 256):
            assert render(rec, r).shape == (r, r, 3)


@pytest.mark.parametrize("bad", [0, 8, 24, 33, 272, "32"])
def test_bad_resolution_is_a_user_error(bad):
    with pytest.raises(UserError, match="multiple of 16"):
        render(sample_record("text", np.random.default_rng(0)), bad)


def test_every_attribute_value_changes_the_pixels():
    """Recoverable from pixels: changing any one attribute of a record changes its render."""
    rng = np.random.default_rng(1)
    for category, schema in SCHEMA.items():
        base = sample_record(category, rng, held_out=None)
        for key, values in schema.items():
            for value in (values[:40] if key == "word" else values):
                other = {**base, key: value}
                if value == base[key] or (category == "text" and not _readable(other)):
                    continue
                assert not np.array_equal(render(base), render(other)), (category, key, value)


def _readable(rec):
    from flashdistill.world.schema import is_valid

    return is_valid(rec)


def test_validate_record_names_the_bad_key():
    rec = sample_record("portrait", np.random.default_rng(2))
    with pytest.raises(UserError, match="hair_color"):
        validate_record({**rec, "hair_color": "teal"})
    with pytest.raises(UserError, match="unknown attribute 'wings'"):
        validate_record({**rec, "wings": 2})
    with pytest.raises(UserError, match="missing attribute 'skin'"):
        validate_record({k: v for k, v in rec.items() if k != "skin"})


def test_training_pool_never_holds_held_out_and_bench_does():
    for category in T2I_CATEGORIES:
        train = [t2i_item(category, i, "train").record for i in range(400)]
        bench = [t2i_item(category, i, "bench").record for i in range(400)]
        assert not any(is_held_out(r) for r in train)
        assert sum(is_held_out(r) for r in bench) == 100  # every fourth bench item


def test_splits_are_disjoint_streams():
    train = {t2i_item("portrait", i, "train").prompt for i in range(300)}
    bench = {t2i_item("portrait", i, "bench").prompt for i in range(300)}
    val = {t2i_item("portrait", i, "val").prompt for i in range(300)}
    assert len(train & bench) <= 3  # equal only by chance on short prompts, never by shared seeds
    assert len(val & bench) <= 3 and len(val & train) <= 3
    assert t2i_item("portrait", 7, "bench") == t2i_item("portrait", 7, "bench")


def test_pool_has_20000_distinct_prompts():
    items = t2i_pool("text", 20_000)
    assert len({it.prompt for it in items}) == 20_000


def test_captions_vary_and_name_their_attributes():
    rng = np.random.default_rng(3)
    rec = sample_record("landscape", rng)
    prompts = set()
    for _ in range(200):
        prompt, attrs = caption(rec, rng)
        prompts.add(prompt)
        assert len(attrs) >= 3 and all(rec[k] == v for k, v in attrs.items())
    assert len(prompts) > 50
    hard, attrs = caption(rec, rng, hard=True)
    assert set(attrs) == set(SCHEMA["landscape"]) and len(hard) > 150
    for category, table in PHRASES.items():
        for key, options in table.items():
            assert all(len(set(p)) >= 3 for p in options.values()), (category, key)


def test_text_prompt_always_names_the_word():
    for i in range(50):
        item = t2i_item("text", i, "bench")
        assert f'"{item.record["word"]}"' in item.prompt and item.attributes["word"] == item.record["word"]


def test_vocabulary():
    assert len(WORDS) >= 200 and all(3 <= len(w) <= 5 and w.isalpha() and w.isupper() for w in WORDS)


def test_font_word_list_and_masks():
    """The font's own checks (once its `__main__` block): a sorted word list without duplicates covering every
    letter at least 3 times, and word masks of the documented shape at scales 1 and 2."""
    import string

    assert len(WORDS) >= 240 and len(set(WORDS)) == len(WORDS) and list(WORDS) == sorted(WORDS)
    assert all(3 <= len(w) <= 5 and set(w) <= set(string.ascii_uppercase) for w in WORDS)
    assert min(sum(c in w for w in WORDS) for c in string.ascii_uppercase) >= 3
    assert word_width(5) == 29
    for w, s in (("OPEN", 1), ("QUIZ", 1), ("JAZZ", 1), ("CAFE", 2)):
        assert word_mask(w, scale=s).shape == (7 * s, word_width(len(w), s))


@pytest.mark.parametrize("category", EDIT_CATEGORIES)
def test_edit_targets_are_exact(category):
    for i in range(25):
        item = edit_item(category, i, "bench")
        validate_edit(item.source, item.edit, f"{category}-{i}")
        src, tgt = source_image(item.source, item.edit, 32), target_image(item.source, item.edit, 32)
        assert not np.array_equal(src, tgt), "an edit must change the image"
        kind = item.edit["kind"]
        if kind == "record":
            assert np.array_equal(tgt, render(item.edit["target"], 32))
            changed = {k for k, v in item.edit["target"].items() if item.source[k] != v}
            assert len(changed) == 1
        elif kind == "style":
            assert np.array_equal(tgt, ops.apply_style(render(item.source, 32), item.edit["op"]))
        else:
            assert np.array_equal(tgt, render(item.source, 32))
            assert np.array_equal(src, ops.degrade(render(item.source, 32), item.edit["degradation"]))
        assert isinstance(item.instruction, str) and len(item.instruction) > 5
        assert target_record(item.source, item.edit)["category"] == item.source["category"]


def test_identity_edits_keep_the_face():
    for i in range(40):
        item = edit_item("identity_preserving", i, "bench")
        assert all(item.edit["target"][k] == item.source[k] for k in IDENTITY_ATTRS)


def test_style_ops_closed_forms():
    img = render(sample_record("portrait", np.random.default_rng(4)))
    assert np.allclose(ops.invert(ops.invert(img)), img)
    g = ops.grayscale(img)
    assert np.allclose(g[..., 0], g[..., 1]) and np.allclose(g[..., 1], g[..., 2])
    assert set(np.unique(ops.posterize(img))) <= {0.0, 0.5, 1.0}
    assert set(np.unique(ops.outline(img))) == {0.0, 1.0}
    assert np.allclose(ops.low_contrast(img, 1.0), img)
    assert np.allclose(ops.lowres(img, 1), img)
    flat = np.full((8, 8, 3), 0.3, np.float32)
    assert np.allclose(ops.blur(flat, 1.5), flat)


def test_noise_degradation_is_reproducible():
    img = render(sample_record("text", np.random.default_rng(5)))
    spec = {"type": "noise", "strength": 0.1, "seed": 42}
    assert np.array_equal(ops.degrade(img, spec), ops.degrade(img, spec))
    with pytest.raises(UserError, match="degradation"):
        ops.degrade(img, {"type": "smear", "strength": 1})


def test_bench_cases_record_their_attributes():
    cases = t2i_bench_cases(5)
    assert len(cases) == 15 and len({c.id for c in cases}) == 15
    for case in cases:
        assert all(case.record[k] == v for k, v in case.attributes.items())
