import sys
from pathlib import Path

import pytest

# Make the helper modules in tests/ (reference_support, checkpoint_files, ...) importable as plain modules.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA GPU is present and are reported as skipped (not run, never
    passed) elsewhere; ``-ra`` lists them with the reason."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False): not run here")
    for item in cuda_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """One random-weight SAM 2.1 tiny checkpoint in the official layout, written once per test run
    (about 150 MB); objects 'appear' (high object-score bias) so that masks are not empty."""
    from checkpoint_files import TINY_CHECKPOINT_NAME, write_checkpoint

    folder = tmp_path_factory.mktemp("checkpoint")
    return write_checkpoint(folder / TINY_CHECKPOINT_NAME, "sam2.1_hiera_t", seed=3, object_score_bias=8.0)


@pytest.fixture(scope="module")
def model():
    """A small random-weight SAM 2.1 tiny (image size 128), one per test module (a module may define its own)."""
    from session_support import small_model

    return small_model()


@pytest.fixture(scope="module")
def threads_client():
    """A dask Client on one in-process worker thread (no worker processes): the batch tests that patch this
    process (a failing write, a Ctrl-C) or need the exact torch threads of the CLI run they compare with."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
          Client(cluster) as client):
        yield client
