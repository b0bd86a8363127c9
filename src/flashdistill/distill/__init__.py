"""DMD distillation with step-wise multi-teacher guidance, data composition and task mixture (paper §2-5).

- `recipe.py`: `Recipe`, the typed YAML recipe (roles, dmd, guidance, data, tasks, eval, run) with strict validation;
- `guidance.py`: λ_{k,m}(c) (eq. 5-6), parsed, validated, looked up per student step and category;
- `dmd.py`: backward simulation, real/fake x0, the DMD gradient and generator loss (eq. 4/7), the critic loss;
- `roles.py`: teachers, student, critic, optimizers, data parallelism under torchrun;
- `trainer.py`: the loop, NaN handling, checkpoints and exact resume, logs, `main_distill(argv, prog)`;
- `export.py`: diffusers-layout export and `load_student(dir)` (the student as a model to sample: `pipeline.StudentModel`).
"""
