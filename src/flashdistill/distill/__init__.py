"""DMD distillation with step-wise multi-teacher guidance, data composition and task mixture (paper §2-5).

- `recipe.py`: `Recipe`, the typed YAML recipe (roles, dmd, guidance, data, tasks, eval, run) with strict validation;
- `guidance.py`: λ_{k,m}(c) (eq. 5-6), parsed, validated, looked up per student step and category;
- `dmd.py`: backward simulation, real/fake x0, the DMD gradient and generator loss (eq. 4/7), the critic loss;
- `layouts/`: teachers, student, critic, optimizers in the layout the recipe names (`roles.mode` full or lora; DDP
  or FSDP2 under torchrun), and the memory they take (`flashdistill plan`);
- `families.py`: what reads the teachers, the batches and the export for the base's model family;
- `trainer.py`: the loop, NaN handling, checkpoints and exact resume, logs, `main_distill(argv, prog)`;
- `evaluate.py`: quick periodic evaluation on a bench slice and best-checkpoint keeping;
- `export.py`: diffusers-layout export, `load_student(dir)`, and `StudentModel` for the benches and generate/edit.
"""
