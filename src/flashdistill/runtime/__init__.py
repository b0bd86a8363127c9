"""What every training loop shares (teacher training and distillation alike): atomic checkpoints that resume
exactly (`checkpoint`), logs and the run's hardware record (`logs`), resume checks and divergence handling
(`resume`), seeded per-step generators and the EMA (`steps`), the ranks under torchrun (`dist`), all-or-nothing
updates (`guard`), sharded checkpoints (`sharded`), the fingerprint of a run's input files (`inputs`), the best
quick-evaluation score so far (`best`), the one training loop (`loop`) and the one `--preset` type and lookup
(`presets`). Nothing here knows teachers or DMD."""
