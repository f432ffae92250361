import os

# Triton decides at decoration time whether a kernel is interpreted, so the switch must
# be set before tritonsparse is imported. On a CUDA machine leave it off to run the real
# kernels (GPU tests), unless the caller set it.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed every test, and restore the thread count a test may change: results that
    are compared bit for bit (exact resume) depend on it, and xdist runs many tests in
    one process."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
