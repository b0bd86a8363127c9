import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the runs are tiny, and a second busy job on a 2-core CPU makes 2 threads spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two different tiny random teachers on disk: `base` and `spec`."""
    import torch

    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    root = tmp_path_factory.mktemp("teachers")
    for seed, name in enumerate(("base", "spec")):
        torch.manual_seed(seed)
        FlowModel(MMDiTConfig.tiny()).save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def lora_teacher(teachers, tmp_path_factory):
    """A specialized teacher stored as a rank-4 LoRA on the `base` teacher (non-zero B)."""
    import torch

    from flashdistill.models.lora import add_lora
    from flashdistill.models.mmdit import FlowModel

    torch.manual_seed(5)
    model = FlowModel.from_pretrained(teachers / "base")
    add_lora(model, rank=4, alpha=None, targets=None, base=str(teachers / "base"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("spec-lora")
    model.save_pretrained(folder)
    return folder


QWEN_PROMPTS = [("a lake at dawn", "landscape"), ("snowy mountains", "landscape"), ("an old man smiling", "portrait"),
                ("a sign that reads OPEN", "text"), ("a poster saying SALE", "text")]
QWEN_EDITS = [("a", "make it winter", "style"), ("b", "replace the word with HELLO", "text_editing"),
              ("c", "write CLOSED on the sign", "text_editing")]


@pytest.fixture(scope="module")
def qwen_world(tmp_path_factory):
    """Tiny edit-plus Qwen-Image base, a random LoRA teacher on it, prompt and edit files and their condition
    cache: (root, the `--set` overrides of configs/qwen-image-flash.yaml that name them)."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from flashdistill.cli import main
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
    root = tmp_path_factory.mktemp("qwen-distill")
    base = write_tiny_folder(root / "base", "edit-plus")
    lora = write_random_lora(base, root / "specialized.safetensors", rank=4)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n"
                                                for p, c in QWEN_PROMPTS))
    rng = np.random.default_rng(0)
    for name, _, _ in QWEN_EDITS:
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    (root / "edits.jsonl").write_text("".join(json.dumps({"image": f"{n}.png", "instruction": i, "category": c})
                                              + "\n" for n, i, c in QWEN_EDITS))
    sets = [f"teachers.base={base}", f"teachers.specialized={lora}", f"data.prompts={root / 'prompts.jsonl'}",
            f"data.edits={root / 'edits.jsonl'}", f"run.text_cache={root / 'cache'}", "data.resolution=64"]
    assert main(["cache", str(recipe), "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    return root, sets
