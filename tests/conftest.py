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
