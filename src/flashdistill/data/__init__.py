"""Training data from the procedural world: deterministic T2I + edit batches with a configurable composition and
task mixture (`flashdistill.data.batches`)."""
