"""Condition caches: every encoder output training needs, encoded once, so the text encoder and the VAE are never
resident next to the roles (`flashdistill cache`).

What is cached, per encoder (`flashdistill.models.qwen_image.QwenImageParts` for Qwen-Image folders):
- every T2I prompt: its token embeddings, real tokens only (L, D);
- the negative prompt (`negative_prompt`, default " ") for true CFG of T2I rows;
- every edit (source image + instruction): the VL embedding of source + instruction (`emb`), of source + negative
  prompt (`neg`; the edit pipelines encode the negative with the image too) and the normalised source latents.

Layout of the folder:
- `shard-*.safetensors`: the truth. Tensors are named `KEY/emb`, `KEY/neg`, `KEY/latents`; KEY is the sha256 of the
  encoder's identity and the content (the prompt's text; an edit's instruction, the sha256 of its image file's
  bytes and the VAE area), so a changed prompt, image or model is a new entry and equal content is shared.
- every shard is written to a temporary name and renamed (atomic): a killed run loses at most the entries of the
  shard it was filling; the same command again encodes only what is missing (resume).
- `index.json`: the encoder identity, settings, the command that builds the cache, and a shard summary. A
  damaged index (not JSON, a missing key) is a UserError naming it and the key.
- a damaged shard (truncated, a garbage header) is named: `flashdistill cache` sets it aside as
  `damaged-shard-*.safetensors` (kept, never deleted) and encodes again what it held, since entries are found by
  scanning the shards; a reader (`distill`) refuses it, naming the shard and the command that repairs the cache.

Reading: `ConditionCache(folder)` gives batches (`prompts`, `negative`, `edits`); a missing entry raises a
UserError naming the command to run. `check_items(prompts, edits)` does so for a whole run before it starts and
groups the edits by their sources' latent shape (shard headers only). Tests: `pytest tests/test_cache.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flashdistill.errors import UserError, one_line
from flashdistill.files import file_digest
from flashdistill.imageio import image_size
from flashdistill.records import read_record

Tensor = torch.Tensor
INDEX = "index.json"
SHARD_GLOB = "shard-*.safetensors"
DAMAGED = "damaged-"  # prefix of a set-aside shard: outside SHARD_GLOB, so its entries count as missing
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
INDEX_KEYS = {"model_id": str, "model": str, "dtype": str, "negative_prompt": str, "vae_area": int, "command": str}


def prompt_key(model_id: str, text: str) -> str:
    return hashlib.sha256(f"{model_id}\nprompt\n{text}".encode()).hexdigest()


def edit_key(model_id: str, instruction: str, image_digest: str, area: int) -> str:
    return hashlib.sha256(f"{model_id}\nedit\n{area}\n{image_digest}\n{instruction}".encode()).hexdigest()


class DamagedShard(UserError):
    """A shard whose header does not read (truncated, overwritten); `path` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: damaged cache shard ({reason})")
        self.path = path


def _open(path: Path):
    """safe_open of a shard; DamagedShard when its header does not read (safetensors checks that the header is
    valid JSON and that the tensors it lists exactly cover the file, so a truncated shard is caught here)."""
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as err:
        raise DamagedShard(path, one_line(err)[:160]) from None
    except OSError as err:  # unreadable (permissions, I/O): not damage, so never set aside
        raise UserError(f"{path}: cannot read this cache shard ({err.strerror or err})") from None


def _scan(folder: Path, known: dict[str, Path]) -> dict[str, Path]:
    """KEY -> shard for every entry in the folder's shards (headers only; shards already in `known` are skipped)."""
    seen = set(known.values())
    for path in sorted(folder.glob(SHARD_GLOB)):
        if path in seen:
            continue
        with _open(path) as handle:
            for name in handle.keys():
                known[name.split("/")[0]] = path
    return known


def set_aside_damaged(folder: Path) -> list[str]:
    """Rename every shard whose header does not read to `damaged-NAME` (kept for inspection, outside SHARD_GLOB):
    its entries are then missing, and `build_cache` encodes them again. Returns one line per shard moved."""
    moved = []
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            with _open(path):
                pass
        except DamagedShard as err:
            target = path.with_name(DAMAGED + path.name)
            os.replace(path, target)
            moved.append(f"{err}; set aside as {target.name}, its entries are encoded again")
    return moved


def read_index(folder: Path) -> dict:
    """The cache's index.json with the keys readers need (records.read_record: a damaged index names the key)."""
    index = read_record(Path(folder) / INDEX, "cache index", INDEX_KEYS)
    if index["dtype"] not in DTYPES:
        raise UserError(f"cache index {Path(folder) / INDEX}: key 'dtype' must be one of {', '.join(DTYPES)}, "
                        f"got {index['dtype']!r}")
    return index


class _ShardWriter:
    def __init__(self, folder: Path, meta: dict, shard_size: int):
        self.folder, self.meta, self.shard_size = folder, meta, shard_size
        self.pending: dict[str, Tensor] = {}
        self.keys: set[str] = set()

    def add(self, key: str, tensors: dict[str, Tensor]) -> None:
        for name, t in tensors.items():
            self.pending[f"{key}/{name}"] = t.detach().to("cpu", DTYPES[self.meta["dtype"]]).contiguous()
        self.keys.add(key)
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = self.folder / f".tmp-{name}"
        save_file(self.pending, str(tmp), metadata={"model_id": self.meta["model_id"]})
        os.replace(tmp, self.folder / name)
        self.pending, self.keys = {}, set()
        write_index(self.folder, self.meta)


def write_index(folder: Path, meta: dict) -> None:
    shards = {}
    for path in sorted(folder.glob(SHARD_GLOB)):
        with _open(path) as handle:
            shards[path.name] = len({k.split("/")[0] for k in handle.keys()})
    index = dict(meta, format=1, entries=sum(shards.values()), shards=shards)
    tmp = folder / f".tmp-{INDEX}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, folder / INDEX)


def _check_meta(folder: Path, meta: dict) -> None:
    if not (folder / INDEX).exists():
        return
    old = read_index(folder)
    for key in ("model_id", "dtype", "negative_prompt", "vae_area"):
        if old[key] != meta[key]:
            raise UserError(f"{folder}: this cache was built with {key} {old.get(key)!r}, not {meta[key]!r}; "
                            f"use another --out folder")


def build_cache(folder: str | Path, encoder, prompts: list, edits: list, command: str,
                negative_prompt: str = " ", vae_area: int = 1024 * 1024, dtype: str = "bfloat16",
                batch_size: int = 16, shard_size: int = 256, progress: bool = True) -> dict:
    """Encode what is missing from `folder` for these items (data.files.Item lists); returns counts and the
    damaged shards set aside (`damaged`: their entries are among those encoded)."""
    from tqdm import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_id = encoder.identity()
    meta = {"model_id": model_id, "model": str(encoder.folder), "dtype": dtype, "negative_prompt": negative_prompt,
            "vae_area": int(vae_area), "command": command}
    _check_meta(folder, meta)
    damaged = set_aside_damaged(folder)
    done = _scan(folder, {})
    # the T2I negative prompt is needed (and encodable: an Edit pipeline has no T2I template) only with prompts
    texts = list(dict.fromkeys(([negative_prompt] if prompts else []) + [item.text for item in prompts]))
    todo_p = [t for t in texts if prompt_key(model_id, t) not in done]
    todo_e = {}
    for item in edits:
        key = edit_key(model_id, item.text, file_digest(item.source), vae_area)
        if key not in done:
            todo_e[key] = item
    for item in todo_e.values():  # every source checked before anything is encoded
        what = f"{item.where}: image {item.source}"
        encoder.check_source(image_size(item.source, what), vae_area, what)
    writer = _ShardWriter(folder, meta, shard_size)
    bar = tqdm(total=len(todo_p) + len(todo_e), unit="item", desc="cache", disable=not progress)
    for start in range(0, len(todo_p), batch_size):
        chunk = todo_p[start: start + batch_size]
        emb, mask = encoder.encode_prompts(chunk)  # (B, L, D), (B, L): one batched pass
        for text, row, row_mask in zip(chunk, emb, mask):
            writer.add(prompt_key(model_id, text), {"emb": row[row_mask]})
        bar.update(len(chunk))
    for key, item in todo_e.items():
        writer.add(key, encoder.encode_edit(item.text, item.load_source(), negative_prompt, vae_area))
        bar.update(1)
    writer.flush()
    bar.close()
    write_index(folder, meta)
    return {"prompts": len(texts), "edits": len(edits), "encoded": len(todo_p) + len(todo_e),
            "entries": read_record(folder / INDEX, "cache index", {"entries": int})["entries"],
            "damaged": damaged}


class ConditionCache:
    """Batches from a cache folder; never loads an encoder. A missing entry names the command to run."""

    def __init__(self, folder: str | Path, model_id: str | None = None):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.exists():
            raise UserError(f"{self.folder}: no condition cache here (index.json is missing): build it with "
                            f"`flashdistill cache RECIPE --out {self.folder}`")
        self.meta = read_index(self.folder)
        if model_id is not None and model_id != self.meta["model_id"]:
            raise UserError(f"{self.folder}: the cache was built for another model ({self.meta['model']}); "
                            f"rebuild it with `{self.meta['command']}`")
        self.model_id = self.meta["model_id"]
        self._where = self._scan({})
        self._handles: dict[Path, object] = {}
        self._digests: dict[tuple, str] = {}  # (path, mtime, size) -> sha256: a source is hashed once per run

    def _digest(self, path: Path) -> str:
        if not path.is_file():
            raise UserError(f"{path}: no such file (an edit source named in the edits file)")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def __len__(self) -> int:
        return len(self._where)

    def _scan(self, known: dict[str, Path]) -> dict[str, Path]:
        try:
            return _scan(self.folder, known)
        except DamagedShard as err:
            raise UserError(f"{err}: run `{self.meta['command']}`, which sets it aside and encodes its entries "
                            f"again") from None

    def _handle(self, key: str, what: str):
        if key not in self._where:
            self._where = self._scan(self._where)  # another process may have added it since
        if key not in self._where:
            raise UserError(f"{self.folder}: no cached {what}: run `{self.meta['command']}` to encode it")
        path = self._where[key]
        if path not in self._handles:
            self._handles[path] = _open(path)
        return path, self._handles[path]

    def _get(self, key: str, name: str, what: str, shape_only: bool = False):
        """The tensor `KEY/name` as float32, or only its shape (read from the shard's header)."""
        path, handle = self._handle(key, what)
        try:
            if shape_only:
                return tuple(handle.get_slice(f"{key}/{name}").get_shape())
            return handle.get_tensor(f"{key}/{name}").float()
        except SafetensorError as err:  # a shard written by something else, or edited: it lacks this tensor
            raise UserError(f"{path}: damaged cache shard: {key}/{name} does not read ({one_line(err)}); move it "
                            f"aside and run `{self.meta['command']}`") from None

    def _edit_key(self, item) -> str:
        return edit_key(self.model_id, item.text, self._digest(item.source), self.meta["vae_area"])

    def check_items(self, prompts: list, edits: list) -> dict[tuple, list]:
        """Before a run: every prompt (and the negative prompt) and edit cached, or a UserError naming the first
        missing one and how many are; returns the edits grouped by their source latents' shape (headers only)."""
        texts = dict.fromkeys(([self.meta["negative_prompt"]] if prompts else []) + [p.text for p in prompts])
        edit_keys = [self._edit_key(item) for item in edits]
        keys = [(prompt_key(self.model_id, t), f"prompt {t[:60]!r}") for t in texts]
        keys += [(key, f"edit {item.text[:60]!r} of {item.source}") for key, item in zip(edit_keys, edits)]
        if any(key not in self._where for key, _ in keys):
            self._where = self._scan(self._where)  # another process may have added them since
        missing = [what for key, what in keys if key not in self._where]
        if missing:
            more = f" (and {len(missing) - 1} more items)" if len(missing) > 1 else ""
            raise UserError(f"{self.folder}: no cached {missing[0]}{more}: run `{self.meta['command']}` to encode "
                            f"them")
        shapes: dict[tuple, list] = {}
        for key, item in zip(edit_keys, edits):
            shape = self._get(key, "latents", f"edit of {item.source}", shape_only=True)
            shapes.setdefault(shape, []).append(item)
        return shapes

    def prompts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """(emb (B, L, D) float32, mask (B, L) bool), L = the longest of the batch."""
        rows = [self._get(prompt_key(self.model_id, t), "emb", f"prompt {t[:60]!r}") for t in texts]
        return pad_rows(rows)

    def negative(self, batch_size: int) -> tuple[Tensor, Tensor]:
        emb, mask = self.prompts([self.meta["negative_prompt"]])
        return emb.expand(batch_size, -1, -1), mask.expand(batch_size, -1)

    def edits(self, items: list) -> dict[str, Tensor]:
        """emb, mask, neg, neg_mask (B, L, D)/(B, L) and latents (B, z, h, w) of edit items (data.files.Item)."""
        emb, neg, latents = [], [], []
        for item in items:
            key = self._edit_key(item)
            what = f"edit {item.text[:60]!r} of {item.source}"
            emb.append(self._get(key, "emb", what))
            neg.append(self._get(key, "neg", what))
            latents.append(self._get(key, "latents", what))
        if len({tuple(t.shape) for t in latents}) > 1:
            raise UserError(f"{self.folder}: the sources of this batch have different latent sizes "
                            f"{sorted({tuple(t.shape) for t in latents})}; batch sources of one aspect ratio")
        (e, m), (n, nm) = pad_rows(emb), pad_rows(neg)
        return {"emb": e, "mask": m, "neg": n, "neg_mask": nm, "latents": torch.stack(latents)}


def pad_rows(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(L_i, D) rows -> right-padded (B, L, D) and a bool mask (B, L)."""
    n = max(r.shape[0] for r in rows)
    emb = torch.zeros(len(rows), n, rows[0].shape[1])
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        emb[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return emb, mask
