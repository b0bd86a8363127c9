"""flashdistill: few-step (1- to 4-NFE) distillation of text-to-image + editing flow-matching models with DMD.

Implements the system of "Qwen-Image-Flash: Beyond Objective Design" (arXiv 2606.03746): an embedded procedural
image world with exact ground truth, the paper's two benchmarks with judges, and (later) teachers, the DMD engine
and its three recipe levers. Run `flashdistill --help` for the commands.
"""

__version__ = "0.1.0"
