"""Teacher training for the embedded world: `flashdistill teacher train CONFIG` (base teacher on the full world)
and `flashdistill teacher specialize CONFIG` (a base teacher fine-tuned on a category-heavy mix).

- `config.py`: `TeacherConfig`, loaded from YAML with strict validation and dotted overrides;
- `checkpoint.py`: atomic, pickle-free checkpoints (safetensors + JSON) that resume exactly;
- `train.py`: the flow-matching training loop (paper eq. 2), EMA, logs, export, and `main_train(argv)`;
- `specialize.py`: `specialize_teacher` / `main_specialize(argv)`, training that must start from a base teacher.
"""
