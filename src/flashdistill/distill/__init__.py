"""DMD distillation with step-wise multi-teacher guidance, data composition and task mixture (paper §2-5).

- `recipe.py`: `Recipe`, the typed YAML recipe (roles, dmd, guidance, data, tasks, eval, run) with strict validation;
- `guidance.py`: λ_{k,m}(c) (eq. 5-6), parsed, validated, looked up per student step and category;
- `dmd.py`: backward simulation, real/fake x0, the DMD gradient and generator loss (eq. 4/7), the critic loss;
- `roles.py`: teachers, student, critic, optimizers, data parallelism under torchrun;
- `trainer.py`: the loop, NaN handling, checkpoints and exact resume, logs, `train_distill` (the command line:
  `flashdistill/cli/distill.py`);
- `evaluate.py`: quick periodic evaluation on a bench slice and best-checkpoint keeping;
- `export.py`: diffusers-layout export, `load_student(dir)`, and `StudentModel` for the benches and generate/edit.
"""
