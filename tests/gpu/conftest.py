import pytest
import torch


def pytest_collection_modifyitems(items):
    """Everything here is marked gpu and skipped without CUDA (CI has none; the GPU machine runs
    `python -m pytest tests/gpu`)."""
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)
