"""The frozen MiniLM text encoder (offline) and the safetensors embedding cache."""

import json
import os

import pytest
import torch

from flashdistill.errors import UserError
from flashdistill.models.text import EmbeddingCache, TextEncoder, trim_to_longest

LONG = " ".join(["a crowded market street at dusk with lanterns, a red bicycle and a sign reading OPEN"] * 12)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


class Counting:
    """Wraps an encoder and counts its calls, to prove that cache hits never re-encode."""

    def __init__(self, inner, id_suffix=""):
        self.inner, self.calls, self.texts = inner, 0, []
        self.id, self.dim, self.max_length = inner.id + id_suffix, inner.dim, inner.max_length

    def encode(self, texts):
        self.calls += 1
        self.texts += list(texts)
        return self.inner.encode(texts)


def test_encoder_is_offline_and_token_level(encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    emb, mask = encoder.encode(["a red hat", "a portrait of a smiling woman with glasses", LONG])
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert emb.shape == (3, 128, 384) and mask.shape == (3, 128)  # padded to the longest, truncated at 128
    assert mask[2].all()
    n0 = int(mask[0].sum())
    assert n0 == 5 and mask[0, :n0].all() and not mask[0, n0:].any()  # [CLS] a red hat [SEP]
    assert (emb[~mask] == 0).all()
    short_emb, short_mask = encoder.encode(["a red hat", "a cat"])
    assert short_emb.shape == (2, 5, 384) and short_mask[1].sum() == 4


def test_same_text_same_embedding(encoder):
    a, mask_a = encoder.encode(["a snowy mountain at night"])
    b, mask_b = encoder.encode(["a snowy mountain at night", "a much longer prompt about a lake in autumn at sunset"])
    n = int(mask_a.sum())
    torch.testing.assert_close(a[0, :n], b[0, :n], atol=1e-4, rtol=1e-4)  # padding in the batch changes nothing
    other, _ = encoder.encode(["a sunny beach at noon"])
    assert not torch.allclose(a[0, 1:n - 1], other[0, 1:n - 1], atol=1e-2)
    empty, empty_mask = encoder.empty_embedding()
    assert empty.shape == (1, 2, 384) and empty_mask.all()


def test_cache_hit_avoids_encoding_and_survives_a_new_instance(encoder, tmp_path):
    counting = Counting(encoder)
    cache = EmbeddingCache(tmp_path, counting)
    texts = ["a red hat", "a cat on a mat", "a red hat", "a sign that says HELLO"]
    emb, mask = cache.get(texts)
    assert counting.calls == 1 and sorted(counting.texts) == sorted(set(texts))  # duplicates encoded once
    assert emb.shape == (4, 128, 384) and mask.shape == (4, 128)
    assert (emb[~mask] == 0).all() and int(mask[0].sum()) == 5
    fresh, fresh_mask = encoder.encode(texts)
    n = fresh.shape[1]
    torch.testing.assert_close(emb[:, :n], fresh, atol=2e-3, rtol=2e-3)  # float16 storage
    assert torch.equal(mask[:, :n], fresh_mask) and not mask[:, n:].any()
    cache.get(texts[:2])
    assert counting.calls == 1
    cache.flush()
    shards = list(tmp_path.glob("shard-*.safetensors"))
    assert len(shards) == 1 and not list(tmp_path.glob(".tmp-*"))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["entries"] == 3 and index["encoder_id"] == counting.id

    second = Counting(encoder)
    again = EmbeddingCache(tmp_path, second)
    assert len(again) == 3 and "a cat on a mat" in again
    emb2, mask2 = again.get(texts)
    assert second.calls == 0
    assert torch.equal(emb2, emb) and torch.equal(mask2, mask)
    again.get(["a cat on a mat", "a new prompt"])
    assert second.texts == ["a new prompt"]


def test_cache_sees_shards_written_after_it_opened(encoder, tmp_path):
    reader = EmbeddingCache(tmp_path, Counting(encoder))
    writer = EmbeddingCache(tmp_path, Counting(encoder))
    assert writer.precompute(["a blue door", "a green field", "a blue door"]) == 2
    assert writer.precompute(["a blue door"]) == 0
    reader.get(["a green field"])
    assert reader.encoder.calls == 0


def test_cache_empty_embedding_and_trim(encoder, tmp_path):
    cache = EmbeddingCache(tmp_path, encoder)
    emb, mask = cache.empty_embedding()
    assert emb.shape == (1, 128, 384) and int(mask.sum()) == 2
    batch_emb, batch_mask = cache.get(["a red hat", "a cat"])
    short_emb, short_mask = trim_to_longest(batch_emb, batch_mask)
    assert short_emb.shape == (2, 5, 384) and short_mask.shape == (2, 5)


def test_cache_refuses_another_encoders_folder(encoder, tmp_path):
    EmbeddingCache(tmp_path, encoder).precompute(["a red hat"])
    with pytest.raises(UserError, match="another folder"):
        EmbeddingCache(tmp_path, Counting(encoder, id_suffix=";other"))
