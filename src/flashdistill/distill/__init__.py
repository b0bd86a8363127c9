"""DMD distillation with step-wise multi-teacher guidance, data composition and task mixture (paper §2-5).

- `recipe.py`: `Recipe`, the typed YAML recipe (roles, dmd, guidance, data, tasks, eval, run) with strict validation;
- `guidance.py`: λ_{k,m}(c) (eq. 5-6), parsed, validated, looked up per student step and category;
- `dmd.py`: backward simulation, real/fake x0, the DMD gradient and generator loss (eq. 4/7), the critic loss;
- `layouts/`: teachers, student, critic, optimizers in the layout the recipe names (`roles.mode` full or lora; DDP
  or FSDP2 under torchrun), and the memory they take (`flashdistill plan`);
- `families.py`: what reads the teachers, the batches and the export for the base's model family;
- `iteration.py`: one DMD iteration (generator update with backward simulation, critic updates, all or nothing);
- `trainer.py`: the run as a job of the one training loop (runtime/loop.py): checkpoint, restore, quick evaluation
  with the scorer handed in, export; `train_distill` (the command line: `flashdistill/cli/distill.py`);
- `run_or_resume.py`: `train_or_resume`, a run resumed when its folder holds a checkpoint (quickstart, studies);
- `export.py`: diffusers-layout export and `load_student(dir)` (the student as a model to sample:
  `pipeline.StudentModel`).
"""
