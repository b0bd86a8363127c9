"""Teacher training for the embedded world: `flashdistill teacher train CONFIG` (base teacher on the full world)
and `flashdistill teacher specialize CONFIG` (a base teacher fine-tuned on a category-heavy mix).

- `config.py`: `TeacherConfig`, loaded from YAML with strict validation and dotted overrides;
- checkpoints: atomic, pickle-free (safetensors + JSON), resuming exactly (`flashdistill/runtime/checkpoint.py`);
- `train.py`: the flow-matching training loop (paper eq. 2), EMA, logs, export (`train_teacher`);
- `specialize.py`: `specialize_teacher`, training that must start from a base teacher;
- `ship.py`: `ship`, a trained teacher copied into the package (`flashdistill teacher ship`).
Their command lines (parsers, exit codes) are in `flashdistill/cli/teacher.py`.
"""
