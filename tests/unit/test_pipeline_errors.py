"""Which training failures become one TrainingError paragraph (memory, sizes, float overflow) and which stay bugs."""

import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.errors import TrainingError
from modelfoundry.api.training import _allocation_error
from tests.conftest import tiny_config

CONFIG = load_config(tiny_config(model={"name": "mlp", "hidden": [30_000_000]}))


@pytest.mark.parametrize("exc,expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 161.00 GiB (GPU 0; 139.00 GiB total)"),
     "does not fit in memory (CUDA out of memory. Tried to allocate 161.00 GiB"),
    (MemoryError(), "does not fit in memory (MemoryError)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 160000000000 bytes."), "(DefaultCPUAllocator: can't allocate memory"),
    (TypeError("empty(): argument 'size' failed to unpack the object at pos 1 with error \"Overflow when unpacking "
               "long long\""), "beyond what torch can represent"),
    (RuntimeError("value cannot be converted to type float without overflow"), "overflowed during training"),
])
def test_resource_failures_become_a_training_error(exc, expected):
    error = _allocation_error(exc, CONFIG)
    assert isinstance(error, TrainingError) and expected in error.message, error
    assert "hidden: [30000000]" in error.message or "overflowed" in error.message


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), TypeError("bad operand")])
def test_other_errors_stay_what_they_are(exc):
    assert _allocation_error(exc, CONFIG) is exc
