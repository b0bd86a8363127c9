"""What every training loop shares (teacher training and distillation alike): atomic checkpoints that resume
exactly (`checkpoint`), logs and the run's hardware record (`logs`), resume checks and divergence handling
(`resume`), seeded per-step generators and the EMA (`steps`), the best quick-evaluation score so far (`best`).
Nothing here knows teachers or DMD."""
