"""What a run's result depends on besides its recipe: the teachers' weight files and the data files' content.

A distillation checkpoint records `fingerprint_inputs(teachers, resolve, data, named_files)` beside the recipe (the
caller names the files: distill/inputs.py); `--resume` compares it with the inputs as they are now (`check_inputs`)
and refuses, naming the input, when the base pipeline folder's weights were swapped, a LoRA teacher file replaced,
or a data file (prompts / edits JSONL, an edit's source image) edited in place. `--accept-changed-inputs` continues
on purpose; the next checkpoint then records the new inputs.

How each kind of file is fingerprinted, and why that is enough:
- Data files (JSONL and the files they name, e.g. the images of an edits file) by the SHA-256 of every byte: one
  changed prompt or pixel is a different dataset, and they are read whole anyway (the condition cache keys edits by
  their image's digest).
- Weight files (`.safetensors`, `.bin`, `.pt`, ...; a 20B model is ~40 GB, too much to read at every start) by
  their size, their safetensors header (every tensor's name, dtype, shape and offsets: any change of layout) and
  the SHA-256 of the first and last MiB plus 64 blocks of 64 KiB spread evenly between (~6 MiB a file). Weights
  swapped for another checkpoint of the same architecture, or a LoRA merged into them, change nearly every block
  that holds the changed tensors, which are most of the file; the samples land in them. What this would miss, an
  edit confined to bytes no sample touches, is not how weights change. Files up to 8 MiB are hashed whole.
- Config files (`.json`) in a teacher's folder are hashed whole. Other files (README, images of a model card) are
  not part of the identity.
Modification times are not used: copying a folder to a node's local disk changes them and not the content.

Tests: `pytest tests/test_inputs.py`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import file_digest

FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
FULL_HASH_BYTES = 8 << 20  # up to this size a weight file is hashed whole
EDGE, BLOCK, SAMPLES = 1 << 20, 64 << 10, 64
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
ACCEPT_FLAG = "--accept-changed-inputs"


def weight_fingerprint(path: str | Path) -> str:
    """`size:sha256` of a weight file's header, edges and evenly spread samples (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return f"{size}:{file_digest(path)}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(f.read(min(n, MAX_HEADER)))
        span = size - 2 * EDGE - BLOCK
        for offset in [0, *(EDGE + span * i // (SAMPLES - 1) for i in range(SAMPLES)), size - EDGE]:
            f.seek(offset)
            h.update(f.read(EDGE if offset in (0, size - EDGE) else BLOCK))
    return f"{size}:{h.hexdigest()}"


def _folder_files(folder: Path) -> dict[str, str]:
    """Relative path -> fingerprint of every weight and config file under `folder` (hidden paths skipped)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in WEIGHT_SUFFIXES:
            files[rel.as_posix()] = weight_fingerprint(path)
        elif path.suffix == ".json":
            files[rel.as_posix()] = f"{path.stat().st_size}:{file_digest(path)}"
    return files


def _teacher_entry(path: Path) -> dict:
    """A teacher: a folder (its weight and config files) or one file (a LoRA); names relative to `root`."""
    if path.is_file():
        return {"root": str(path.parent), "files": {path.name: weight_fingerprint(path)}}
    return {"root": str(path), "files": _folder_files(path)}


def _data_entry(key: str, path: Path, named_files: Callable[[str, Path], list[str]] | None) -> dict:
    """A data file and the files it names, `named_files(key, path)` (relative to its folder when inside it)."""
    files = {path.name: f"{path.stat().st_size}:{file_digest(path)}"}
    for source in named_files(key, path) if named_files else []:
        image = Path(os.path.normpath(source))
        name = image.relative_to(path.parent).as_posix() if image.is_relative_to(path.parent) else str(image)
        files[name] = f"{image.stat().st_size}:{file_digest(image)}" if image.is_file() else "missing"
    return {"root": str(path.parent), "files": files}


def fingerprint_inputs(teachers: dict[str, str], resolve: Callable[[str, str], str | Path],
                       data: dict[str, str | None], named_files: Callable[[str, Path], list[str]] | None = None
                       ) -> dict:
    """The identity of a run's inputs: the weight files of every teacher (key -> spec; `resolve(spec, key)` gives
    its path) and every data file (key -> path; None or empty: not an input) with the files `named_files(key, path)`
    names. Pure: reads files, writes nothing; equal inputs give equal dicts."""
    entries: dict[str, dict] = {}
    by_path: dict[Path, dict] = {}
    for key, spec in teachers.items():
        path = Path(resolve(spec, key)).resolve()
        if path not in by_path:  # teachers sharing a path (base and critic init) are read once
            by_path[path] = _teacher_entry(path)
        entries[key] = by_path[path]
    for key, value in data.items():
        if value:
            entries[key] = _data_entry(key, Path(value).resolve(), named_files)
    return {"format": FORMAT, "inputs": entries}


def input_changes(saved: dict | None, now: dict) -> list[str]:
    """One phrase per input whose files differ between two fingerprints (empty: the same inputs). A checkpoint
    written before fingerprints existed (`saved` None) has nothing to compare with and gives none."""
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        return []
    old, new = saved.get("inputs") or {}, now["inputs"]
    changes = []
    for key in sorted(set(old) | set(new)):
        if key not in new or key not in old:
            changes.append(f"{key} is {'no longer' if key not in new else 'now'} an input")
            continue
        before, after = old[key]["files"], new[key]["files"]
        differ = [f for f in sorted(set(before) | set(after)) if before.get(f) != after.get(f)]
        if differ:
            first = differ[0]
            how = "is new" if first not in before else "is gone" if first not in after else "changed"
            more = f" (and {len(differ) - 1} more file(s))" if len(differ) > 1 else ""
            changes.append(f"{key}: {Path(new[key]['root']) / first} {how}{more}")
    return changes


def check_inputs(saved: dict | None, now: dict, accept: bool = False) -> list[str]:
    """Refuse (UserError naming the first input that changed) unless `accept`; returns the changes accepted."""
    changes = input_changes(saved, now)
    if changes and not accept:
        raise UserError(f"--resume: the inputs changed since the checkpoint: {'; '.join(changes)}. Restore them, "
                        f"or pass {ACCEPT_FLAG} to continue this run on the new inputs")
    return changes
