from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These tests run tiny models in this process, each op too small to share out: torch's
    threads (one per core) only wait on each other, the more so when the cores are busy
    (three times slower on two shared cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
