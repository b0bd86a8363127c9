"""The role layouts of DMD: how teachers, student, critic and EMA are held in memory (`roles.mode`,
`run.parallel`), and what that costs. Each module imports only those above it in this list:

- `base.py`: `Roles` (what every layout builds), the precision of frozen and trainable weights;
- `fsdp.py`: FSDP2 sharding under `run.parallel: fsdp` (load on rank 0, shard, clone, gather for export);
- `full.py`: `roles.mode: full`, every role its own copy (plain, DDP replicas, or FSDP shards);
- `lora.py`: `roles.mode: lora`, one frozen base shared by every role through peft adapters;
- `build.py`: `build_roles(recipe, dist)`, the layout the recipe names, with its family (distill/families.py);
- `plan.py` (`flashdistill plan`: bytes per role, counted from parameter shapes), `peak.py` (the predicted peak per
  GPU) and `memory.py` (what built roles really hold, to check the planner).
"""
