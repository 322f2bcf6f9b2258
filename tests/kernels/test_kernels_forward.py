"""The fused encoder kernels (GEMM epilogues, Linear+ReLU, the Mixup tail) against the reference.

Shapes are not multiples of the block sizes; float32 by the rule of
tests/support.py against float64, float64 to 1e-10, gradcheck on every
autograd Function. Triton runs under TRITON_INTERPRET=1 on CPUs.
"""
from __future__ import annotations

import pytest
import torch

from drcl_fast.model import Encoder
from drcl_fast.ops import reference
from tests.support import DEVICE, HAVE_TRITON, assert_float64_equal, assert_within_rule, generator

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")

if HAVE_TRITON:
    from drcl_fast.kernels import precision as kp
    from drcl_fast.kernels.linear_relu import linear_relu
    from drcl_fast.kernels.matmul import matmul
    from drcl_fast.kernels.mixup_project import MixupProject


@pytest.fixture(autouse=True)
def exact_matrix_math():
    with kp.precision("fp32"):
        yield


def randn(*shape: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=dtype).to(DEVICE)


def run(fn, inputs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs of fn and the gradients of sum(output * weight) for every input."""
    inputs = [t.clone().requires_grad_() for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights))
    return [o.detach() for o in outs] + list(torch.autograd.grad(total, inputs))


def check_against_reference(fast, ref, inputs64: list[torch.Tensor], weights: list[torch.Tensor],
                            names: list[str]) -> None:
    want = run(ref, inputs64, weights)
    assert_float64_equal(run(fast, inputs64, weights), want, names)
    inputs32 = [t.float() for t in inputs64]
    assert_within_rule(run(fast, inputs32, weights), run(ref, inputs32, weights), want, names)


@pytest.mark.parametrize("m, k, n", [(1, 16, 7), (130, 100, 70), (64, 256, 130)])
def test_gemm_with_bias_relu_epilogue_and_row_norms(m, k, n):
    a, b, bias = randn(m, k, seed=1), randn(k, n, seed=2), randn(n, seed=3)
    row_sq = torch.zeros(m, dtype=torch.float64, device=DEVICE)
    out = matmul(a, b, bias=bias, relu=True, row_sq=row_sq)
    want = torch.relu(a @ b + bias)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(row_sq, want.square().sum(dim=1), rtol=1e-12, atol=1e-12)


def test_gemm_gate_masks_a_on_load_and_takes_transposed_views():
    grad, out, x = randn(70, 130, seed=4), randn(70, 130, seed=5), randn(70, 30, seed=6)
    got = matmul(grad.t(), x, gate=out.t())            # (g * [out > 0])^T x, both as views
    torch.testing.assert_close(got, torch.where(out > 0, grad, 0.0).t() @ x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="gate must have the strides of a"):   # column-major gate, row-major a
        matmul(grad, randn(130, 30, seed=7), gate=out.t().contiguous().t())


@pytest.mark.parametrize("impl", ["triton", "vendor"])
@pytest.mark.parametrize("b, d_in, h", [(1, 16, 7), (7, 100, 130), (130, 256, 64)])
def test_linear_relu_forward_and_gradients(impl, b, d_in, h):
    inputs = [randn(b, d_in, seed=b), randn(h, d_in, seed=h) / d_in ** 0.5, randn(h, seed=7)]
    check_against_reference(lambda x, w, bias: linear_relu(x, w, bias, impl), reference.linear_relu, inputs,
                            [randn(b, h, seed=8)], ["out", "dx", "dW", "db"])


@pytest.mark.parametrize("impl", ["triton", "vendor"])
def test_linear_relu_gradcheck_and_no_input_gradient(impl):
    x, w, bias = randn(5, 9, seed=1), randn(6, 9, seed=2), randn(6, seed=3)
    assert torch.autograd.gradcheck(lambda *a: linear_relu(*a, impl), (x.requires_grad_(), w.requires_grad_(),
                                                                       bias.requires_grad_()))
    x = x.detach()
    linear_relu(x, w, bias, impl).sum().backward()      # the encoder's input: no dx is formed
    assert x.grad is None and w.grad is not None


# C = 200 and 1,000 run in class chunks (mixup_project.CHUNK_C), the last one partial.
@pytest.mark.parametrize("b, h, d, c", [(1, 16, 16, 2), (7, 100, 130, 3), (130, 64, 100, 200), (64, 16, 256, 10),
                                        (33, 16, 70, 1000)])
@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_mixup_tail_forward_and_gradients(b, h, d, c, gamma):
    perm = torch.randperm(b, generator=generator(b)).to(DEVICE)
    prior = randn(d, c, seed=c) / d ** 0.5
    inputs = [randn(b, h, seed=1), randn(d, h, seed=2) / h ** 0.5]
    check_against_reference(lambda hid, w: MixupProject.apply(hid, w, perm, gamma, prior.to(hid.dtype)),
                            lambda hid, w: reference.mixup_project(hid, w, perm, gamma, prior.to(hid.dtype)), inputs,
                            [randn(b, d, seed=3), randn(b, c, seed=4)], ["f~", "logits", "dh", "dW_head"])


def test_mixup_tail_gradcheck_and_one_used_output():
    perm = torch.randperm(6, generator=generator(0)).to(DEVICE)
    prior = randn(11, 3, seed=1)
    hidden, head = randn(6, 8, seed=2).requires_grad_(), randn(11, 8, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda hid, w: MixupProject.apply(hid, w, perm, 0.9, prior), (hidden, head))
    mixed, _ = MixupProject.apply(hidden, head, perm, 0.9, prior)   # logits unused: their gradient is None
    (grad,) = torch.autograd.grad(mixed.sum(), head)
    (want,) = torch.autograd.grad(reference.mixup_project(hidden, head, perm, 0.9, prior)[0].sum(), head)
    torch.testing.assert_close(grad, want)


def test_mixup_tail_in_class_chunks_gradcheck(monkeypatch):
    """Any C: past CHUNK_C the logits go chunk by chunk and dlogits W^T sums over chunks (here
    16-class chunks, C = 37: two full and a partial one)."""
    from drcl_fast.kernels import mixup_project
    monkeypatch.setattr(mixup_project, "CHUNK_C", 16)
    assert mixup_project._blocks(37)[1] == 16 and mixup_project._blocks(1000)[1] < 1000
    perm = torch.randperm(5, generator=generator(1)).to(DEVICE)
    prior = randn(9, 37, seed=2)
    hidden, head = randn(5, 4, seed=3).requires_grad_(), randn(9, 4, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda hid, w: MixupProject.apply(hid, w, perm, 0.9, prior), (hidden, head),
                                    fast_mode=True)
    want = reference.mixup_project(hidden, head, perm, 0.9, prior)
    for got, ref in zip(MixupProject.apply(hidden, head, perm, 0.9, prior), want):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_python_float_kernel_arguments_arrive_as_on_a_gpu():
    """A GPU passes a Python float as a float32 parameter unless it is annotated tl.float64; under the
    interpreter tests/conftest.py's DRCL_FAST_GPU_FLOAT_ARGS (on by default) packs them alike."""
    import os

    import triton
    import triton.language as tl
    if os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("DRCL_FAST_GPU_FLOAT_ARGS", "1") == "0":
        pytest.skip("DRCL_FAST_GPU_FLOAT_ARGS=0: the interpreter passes Python floats as they are")

    @triton.jit
    def widen(out_ptr, plain, wide: tl.float64):
        one = tl.arange(0, 1)
        tl.store(out_ptr + one, plain + tl.zeros((1,), tl.float64))
        tl.store(out_ptr + 1 + one, wide + tl.zeros((1,), tl.float64))

    out = torch.zeros(2, dtype=torch.float64, device=DEVICE)
    widen[(1,)](out, 0.1, 0.1)
    assert out.tolist() == [float(torch.tensor(0.1, dtype=torch.float32)), 0.1]


def test_encoder_fused_forward_matches_forward_then_mixup():
    enc = Encoder(9, 20, 12).double().to(DEVICE)
    x, perm, prior = randn(7, 9, seed=1), torch.randperm(7, generator=generator(2)).to(DEVICE), randn(12, 3, seed=3)
    want, _ = reference.feature_mixup(enc(x), torch.zeros(7, 1, device=DEVICE), 0.9, perm)
    for backend in ("torch", "restructured"):                    # the reference layers, bit for bit
        mixed, logits = enc.mixed_forward(x, perm, 0.9, prior, backend)
        assert torch.equal(mixed, want) and torch.equal(logits, want @ prior)


def test_precision_setting():
    assert kp.get_precision() == "fp32"          # the autouse fixture
    with kp.precision("bf16"):
        assert kp.dot_precision(False) == "bf16" and kp.dot_precision(True) == "ieee"
    with kp.precision("tf32"):
        assert kp.dot_precision(False) == "tf32"
    with pytest.raises(ValueError, match="unknown precision"):
        kp.set_precision("fp16")
    assert kp.get_precision() == "fp32"


@pytest.mark.parametrize("op", ["gce_forward", "linear_relu", "mixup_project"])
def test_registered_custom_ops_pass_opcheck(op):
    from drcl_fast.kernels import custom_op
    if not custom_op.AVAILABLE:
        pytest.skip("torch.library.custom_op needs torch >= 2.4")
    from drcl_fast.kernels import gce, linear_relu, mixup_project  # noqa: F401 - importing registers the ops
    g = [randn(7, 9, seed=s, dtype=torch.float32) for s in range(3)]
    args = {
        "gce_forward": (g[0].requires_grad_(), torch.softmax(g[1], dim=1), 0.5),
        "linear_relu": (g[0].requires_grad_(), randn(5, 9, seed=4, dtype=torch.float32).requires_grad_(),
                        randn(5, seed=5, dtype=torch.float32).requires_grad_(), "triton"),
        "mixup_project": (g[0].requires_grad_(), randn(11, 9, seed=6, dtype=torch.float32).requires_grad_(),
                          torch.randperm(7, generator=generator(1)).to(DEVICE), 0.9,
                          randn(11, 3, seed=7, dtype=torch.float32)),
    }[op]
    torch.library.opcheck(getattr(torch.ops.drcl_fast, op).default, args)
