"""moba.cuda_workspace_peak_bytes: the high-water mark of the CUDA backend's own scratch pool."""
import pytest
import torch

import moba

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or not any(b["name"] == "cuda" and b["available"] for b in moba.backends()),
    reason="no CUDA device or the CUDA backend is not compiled in")


def test_bad_device_is_a_named_error():
    with pytest.raises(ValueError, match="device -1 is not 0..63"):
        moba.cuda_workspace_peak_bytes(-1)


@needs_cuda
def test_peak_counts_the_moba_running_state_and_resets():
    n, h, d = 4096, 4, 128
    q, k, v = (torch.randn(n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, n], device="cuda", dtype=torch.int32)
    torch.cuda.synchronize()
    moba.cuda_workspace_peak_bytes(0, reset=True)
    moba.moba_attn_varlen(q, k, v, cu, n, 512, 3)
    torch.cuda.synchronize()
    peak = moba.cuda_workspace_peak_bytes(0, reset=True)
    # the fp32 running output of the selected-block passes alone is n * h * d * 4 bytes
    assert peak >= n * h * d * 4
    assert moba.cuda_workspace_peak_bytes(0) == 0  # nothing in use since the reset
