"""The recipe's `run` group: how a distillation run is kept and placed (checkpoints, logs, the text cache, device,
threads, rows per pass, the torchrun layout, regional compilation). None of it changes what the run computes except
`parallel` (and `micro_batch` up to float rounding: the micro-batches' gradients add up to the whole batch's)."""

from __future__ import annotations

from dataclasses import dataclass

from flashdistill.runtime.config import require

COMPILE_MODES = ("none", "blocks")
MAX_THREADS = 1024  # torch's intra-op pool; OpenMP sizes its buffers by it (10**9 threads: 216 GB)


@dataclass
class RunSection:
    checkpoint_every: int = 50
    log_every: int = 10
    text_cache: str | None = None  # embedding cache folder; default <out>/../text-cache
    device: str = "auto"
    threads: int = 0  # torch intra-op CPU threads; 0 = torch's default. 1 avoids spin-wait contention on a shared CPU
    micro_batch: int = 0  # rows per forward/backward on a rank (gradient accumulation); 0 = the rank's whole share
    parallel: str = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2 shards of every role, layouts/fsdp.py)
    fsdp_offload: bool = False  # fsdp on CUDA: keep the parameter shards (and their optimizer states) in host memory
    compile: str = "none"  # blocks: regional torch.compile of each transformer block (speed only, so resumable)

    def check(self) -> None:
        require(self.parallel in ("ddp", "fsdp"), "run.parallel", f"must be ddp or fsdp, got {self.parallel!r}")
        require(not self.fsdp_offload or self.parallel == "fsdp", "run.fsdp_offload", "needs run.parallel: fsdp")
        require(self.compile in COMPILE_MODES, "run.compile", f"must be one of {', '.join(COMPILE_MODES)}, got "
                 f"{self.compile!r}")
        require(0 <= self.threads <= MAX_THREADS, "run.threads", f"must be in [0, {MAX_THREADS}] (0 = torch's "
                 f"default), got {self.threads}")
        require(self.micro_batch >= 0, "run.micro_batch", "must be >= 0 (0 = the rank's whole share in one pass)")
        require(self.checkpoint_every >= 1, "run.checkpoint_every", "must be >= 1")
        require(self.log_every >= 1, "run.log_every", "must be >= 1")
        require(self.device in ("auto", "cpu", "cuda"), "run.device", f"must be auto, cpu or cuda, "
                 f"got {self.device!r}")
