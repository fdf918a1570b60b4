"""CUDA paths (SDPA / flash-attn, mamba-ssm kernel when installed) against the CPU fp32 model. Never in the default run."""

from __future__ import annotations

import pytest
import torch

from puzzle.model import CausalLM
from puzzle.model.ssd import ssd, ssd_chunked
from tests.model.tiny import hetero_arch, tokens

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_and_decode_match_cpu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cpu = CausalLM(hetero_arch()).eval()
    gpu = CausalLM(hetero_arch()).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda", dtype)
    ids = tokens(length=12)
    tol = 1e-3 if dtype == torch.float32 else 0.1
    with torch.no_grad():
        want = cpu(ids)
        assert (gpu(ids.cuda()).float().cpu() - want).abs().max() < tol
        cache = gpu.new_cache()
        steps = torch.cat([gpu(ids[:, t : t + 1].cuda(), cache=cache) for t in range(12)], 1)
        assert (steps.float().cpu() - want).abs().max() < tol


def test_ssd_dispatch_on_cuda_matches_pure_pytorch() -> None:
    g = torch.Generator().manual_seed(0)
    x, dt = torch.randn(2, 37, 4, 16, generator=g), torch.rand(2, 37, 4, generator=g) * 0.1
    A, B, C = -torch.rand(4, generator=g), torch.randn(2, 37, 2, 8, generator=g), torch.randn(2, 37, 2, 8, generator=g)
    y_ref, s_ref = ssd_chunked(x, dt, A, B, C, 16)
    y, s = ssd(*(t.cuda() for t in (x, dt, A, B, C)), 16)
    assert (y.cpu() - y_ref).abs().max() < 1e-3 and (s.cpu() - s_ref).abs().max() < 1e-3
