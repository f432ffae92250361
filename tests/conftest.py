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


_ENV_KEYS = ("TRITONSPARSE_BACKEND", "TRITON_INTERPRET", "TRITONSPARSE_DDP_CHECK")
_ENV_AT_START = {k: os.environ.get(k) for k in _ENV_KEYS}  # before any test or module-scoped fixture


@pytest.fixture(autouse=True)
def _seed_threads_and_env():
    """Seed every test, and restore what a test may change for the tests after it in the
    same process (xdist runs many in one): the thread count (results compared bit for bit
    depend on it) and the backend switches in the environment (a script loaded in-process
    that sets TRITONSPARSE_BACKEND=torch would silently move every later test off the
    Triton kernels): after each test they are back to what they were when the session
    started, also if a module-scoped fixture changed them before the test began."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for k, v in _ENV_AT_START.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
