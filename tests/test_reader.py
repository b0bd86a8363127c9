"""Tests of the world judge's reader: the shipped weights load offline and read fresh renders; the API's types and
shapes; a missing file is a UserError; a tiny training run writes a loadable file atomically."""

from __future__ import annotations

import numpy as np
import pytest

from flashdistill.bench.reader import evaluate_reader, train_reader
from flashdistill.errors import UserError
from flashdistill.models.reader import DEFAULT_PATH, Reader, ReaderNet, load_reader
from flashdistill.world.render import render
from flashdistill.world.schema import SCHEMA, sample_record

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def reader() -> Reader:
    return load_reader()


def _renders(category: str, n: int, seed: int = 99) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng([42, seed])
    records = [sample_record(category, rng, held_out=None) for _ in range(n)]
    return records, np.stack([render(r) for r in records])


def test_shipped_reader_loads_from_safetensors(reader):
    assert DEFAULT_PATH.suffix == ".safetensors" and DEFAULT_PATH.is_file()
    assert isinstance(reader.net, ReaderNet) and not reader.net.training
    assert load_reader() is reader  # the default reader is cached


def test_accuracy_on_fresh_clean_renders(reader):
    result = evaluate_reader(reader, n_per_category=100, seed=777)
    for category, accs in result["categories"].items():
        for attr, acc in accs.items():
            if attr != "word":
                assert acc >= 0.95, (category, attr, acc)
    assert result["word_accuracy"] >= 0.90
    assert result["min_attribute_accuracy"] >= 0.95


@pytest.mark.parametrize("category", list(SCHEMA))
def test_predict_returns_valid_records(reader, category):
    _, images = _renders(category, 12)
    preds = reader.predict(images, category)
    assert len(preds) == 12
    for pred in preds:
        assert pred["category"] == category and set(pred) == {"category", *SCHEMA[category]}
        for attr, values in SCHEMA[category].items():
            if attr == "word":
                assert isinstance(pred["word"], str) and pred["word"].isalpha() and len(pred["word"]) <= 5
            else:
                assert pred[attr] in values and type(pred[attr]) is type(values[0])
    probs = reader.predict_proba(images, category)
    for attr, p in probs.items():
        assert p.shape[0] == 12 and np.allclose(p.sum(axis=1), 1.0, atol=1e-4), attr


def test_features_shape_and_determinism(reader):
    _, images = _renders("portrait", 10)
    a, b = reader.features(images), reader.features(images[::-1].copy())[::-1]
    assert a.shape == (10, 64) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # per-image, independent of batch order


def test_bad_input_shape_is_user_error(reader):
    with pytest.raises(UserError):
        reader.predict(np.zeros((2, 20, 20, 3), np.float32), "text")
    with pytest.raises(UserError):
        reader.predict(np.zeros((2, 32, 32, 3), np.float32), "spaceship")


def test_missing_weights_is_user_error(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors") as info:
        load_reader(str(path))
    assert "train" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_weights_is_user_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_reader(str(path))


def test_tiny_training_run_writes_loadable_file_atomically(tmp_path):
    out = tmp_path / "sub" / "reader.safetensors"
    summary = train_reader(str(out), steps=3, batch_size=6, n_train_per_category=12, log_every=1, workers=1)
    assert out.is_file() and summary["steps"] == 3 and len(summary["loss_history"]) == 3
    assert [p.name for p in out.parent.iterdir()] == ["reader.safetensors"]  # no .tmp left behind
    tiny = load_reader(str(out))
    assert tiny.metadata["seed"] == "0" and tiny.metadata["steps"] == "3"
    _, images = _renders("text", 4)
    assert len(tiny.predict(images, "text")) == 4 and tiny.features(images).shape == (4, 64)
