import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # reference.py

import moba  # noqa: E402


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    info = {b["name"]: b for b in moba.backends()}
    if not info["cuda"]["compiled"]:
        return "the moba CUDA backend is not compiled into this build"
    return None


CUDA_SKIP = _cuda_skip_reason()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(CUDA_SKIP is not None,
                                                               reason=str(CUDA_SKIP))),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


def work_dtype(device):
    """The dtype a device-generic test runs in: the CUDA backend computes in bf16/f16 only."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def cuda_rejects_f32(device, dtype, run):
    """On CUDA, f32 inputs must be refused with a clear NotImplementedError; True if so."""
    if device != "cuda" or dtype != torch.float32:
        return False
    with pytest.raises(NotImplementedError, match="bfloat16 and float16"):
        run()
    return True
