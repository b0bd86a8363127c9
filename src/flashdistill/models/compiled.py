"""`run.compile: blocks`: regional compilation of the repeated transformer block, as diffusers'
`ModelMixin.compile_repeated_blocks` does it, for every role's transformer.

- What is compiled: each module whose class the transformer declares in `_repeated_blocks` (Qwen-Image:
  `QwenImageTransformerBlock`), by `module.compile(dynamic=True)` (torch.compile of the module's call, in place).
  The blocks share one code object, so one compiled graph serves all 60 blocks of a variant; the embeddings, the
  output head and the engine stay eager. diffusers matches the class *name*, which FSDP2's `fully_shard` changes
  (to `FSDPQwenImageTransformerBlock`), so the class is matched through the MRO here; FSDP2's hooks run eagerly
  around the compiled call (`torch._dynamo.config.skip_fsdp_hooks`).
- What it works under: peft LoRA with several adapters on one base (roles.mode lora: dynamo specialises a block's
  graph on the active adapter, so each role that runs gets its own variant: student, critic, base with adapters
  off, a specialized LoRA teacher, the EMA; each again with and without grad), per-block gradient checkpointing
  (diffusers' non-reentrant `torch.utils.checkpoint` around the compiled block) and bf16 autocast. `dynamic=True`
  keeps one graph per variant across sequence lengths (T2I and edit rows, prompt and negative lengths); the
  recompile limit is raised to hold every variant (`RECOMPILE_LIMIT`).
- Why it is faster: the block's elementwise work (LayerNorm and modulation, q/k RMSNorm, RoPE, gates and residuals,
  GELU, LoRA's scale-and-add and the adapters' fp32 -> bf16 weight casts) fuses into a few kernels around the
  matmuls and attention; eager runs each as its own kernel launch (benchmarks/gpu_fullsize.py measures both).
- A compiler that does not work (no C++ compiler for the CPU backend, no Triton for CUDA) is found before any
  model work by compiling a probe (`check_compiler`); a failure while compiling a block during training is turned
  into the same one-line UserError (`compile_errors`). Either says to set `run.compile: none`.

It changes no result beyond floating-point rounding (fused kernels round at different points): tests/test_compile.py
holds compiled and eager losses and gradients to a stated tolerance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from flashdistill.errors import UserError

# Variants a block's code may hold: adapters (student, critic, EMA, teacher LoRAs, off) x grad on/off x the block-0
# input that needs no grad x text mask or none x batch of one or more: well under this for the shipped recipes.
RECOMPILE_LIMIT = 128
ADVICE = "set run.compile: none to train without it"


def _configure_dynamo() -> None:
    """Room for every variant (the default limit of 8 would silently fall back to eager for the rest)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer and the older name of one setting
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of `transformer` whose class (or a base class: FSDP2 subclasses it) is in `_repeated_blocks`."""
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    if not names:
        raise UserError(f"run.compile: {type(transformer).__name__} declares no _repeated_blocks to compile; "
                        f"{ADVICE}")
    return [m for m in transformer.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def check_compiler(device: torch.device) -> None:
    """Compile and run a probe on `device`: a missing or broken compiler is one line here, not a traceback in the
    middle of the first iteration."""
    def probe(x):
        return torch.nn.functional.gelu(x @ x.T) * 2 + 1

    x = torch.ones(4, 4, device=device)
    with compile_errors("a probe function"):
        torch.compile(probe, dynamic=False)(x)


@contextmanager
def compile_errors(what: str = "a transformer block") -> Iterator[None]:
    """Turn torch.compile's failures (dynamo, a backend, inductor's C++/Triton build) into one-line UserErrors."""
    import torch._inductor.exc
    from torch._dynamo.exc import TorchDynamoException

    # InductorError (a C++ or Triton build that fails) is a TorchDynamoException in torch 2.13, not in every release
    InductorError = getattr(torch._inductor.exc, "InductorError", TorchDynamoException)
    try:
        yield
    except (TorchDynamoException, InductorError) as err:  # BackendCompilerFailed, Unsupported, a C++/Triton build
        raise UserError(f"run.compile: torch.compile failed on {what} ({_reason(err)}); {ADVICE}") from None


def _reason(err: BaseException) -> str:
    """The innermost cause's first line: what broke (a missing compiler, an unsupported op), short."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = next((line for line in lines if not line.startswith(("Traceback", "File "))), type(err).__name__)
    return f"{type(err).__name__}: {text}"[:300]


def compile_blocks(transformers: Iterable[torch.nn.Module], device: torch.device, backend: str = "inductor") -> int:
    """Compile every repeated block of each distinct transformer in place (see the module docstring); returns how
    many blocks were compiled. The compiler is probed first. `backend`: torch.compile's (the recipe key always
    means inductor; a benchmark's CPU smoke run passes aot_eager, dynamo and AOTAutograd without C++ builds)."""
    if backend == "inductor":
        check_compiler(device)
    _configure_dynamo()
    seen, compiled = set(), 0
    for transformer in transformers:
        if id(transformer) in seen:
            continue
        seen.add(id(transformer))
        for block in repeated_blocks(transformer):
            block.compile(dynamic=True, backend=backend)
            compiled += 1
    return compiled
