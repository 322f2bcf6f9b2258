"""The training kernels index the tensors that can pass 2**31 elements with int64 offsets.

A tensor of B rows (the encoder's activations and gradients, f~, the logits, the loss's B x C pieces)
passes 2**31 elements at a million rows and H = 4,096; an int32 row * stride would wrap and read or
write the wrong rows. The launchers then pass WIDE=True (kernels/offsets.py). No such tensor is
allocated here: the launchers' choice is checked on meta tensors, and each kernel is compiled for sm_90
(no GPU needed) as a wide launch, every integer argument int32, and its Triton IR read. Every product
of a stride argument with an index that grows with the tensor (from the program id, a loop's index or
a gathered row) must be int64, except with the strides of the small operands in INT32_STRIDES; offsets
within one block (a range times a stride, at most BLOCK x stride) may stay int32. At small sizes a wide
launch must compute what a narrow one does, bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.support import REPO, needs_triton

# kernel -> {stride argument: what it strides}: operands that stay far below 2**31 elements, whose
# offsets may stay int32 (C <= MAX_CLASSES, D a few thousand).
INT32_STRIDES = {"_mse_kernel": {"s_l": "L, C x D"}, "_mix_project_fwd": {"s_w": "the prior, D x C"},
                 "_mix_project_bwd": {"s_w": "the prior, D x C"}}

# Compiled in a subprocess: the test process runs the interpreter, whose kernels do not compile.
PROBE = r'''
import json, re
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from drcl_fast.kernels import drcl_loss, gce, matmul
from drcl_fast.kernels import mixup_project as mp

JOBS = [(matmul._matmul_kernel, dict(HAS_BIAS=True, RELU=True, GATED=True, ROW_SQ=True, A_K_CONTIG=False,
                                     B_N_CONTIG=False, BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, GROUP_M=8)),
        (mp._mix_project_fwd, dict(BLOCK_B=32, BLOCK_D=64, BLOCK_C=32)),
        (mp._mix_project_bwd, dict(BLOCK_B=32, BLOCK_D=64, BLOCK_C=32, ONE_CHUNK=False)),
        (drcl_loss._pair_kernel, dict(GRAD=True, BLOCK=32, BLOCK_D=64, BLOCK_C=16)),
        (drcl_loss._mse_kernel, dict(GRAD=True, BLOCK_B=32, BLOCK_D=64, BLOCK_C=32)),
        (gce._gce_kernel, dict(Q_ZERO=False, BLOCK_B=4, BLOCK_C=1024))]
FLOATS = {"gamma", "scale", "eps", "grad_scale", "q", "inv_b"}
LINE = re.compile(r"^\s*(%[\w.]+) = ([\w.]+) (.*?) : (.*?)(?: loc\(.*)?$")
PASS_THROUGH = {"tt.splat", "tt.broadcast", "tt.expand_dims", "arith.extsi"}
out = {}
for fn, consts in JOBS:
    consts = {**{k: v for k, v in (("PRECISION", "ieee"), ("ACC", tl.float32)) if k in fn.arg_names}, **consts,
              "WIDE": True}
    sig = {n: "constexpr" if n in consts else ("*i64" if "perm" in n else "*fp32") if n.endswith("_ptr")
           else "fp64" if n in FLOATS else "i32" for n in fn.arg_names}
    ir = triton.compile(triton.compiler.ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32)).asm["ttir"]
    ops = {}
    for line in ir.splitlines():
        m = LINE.match(line)
        if m:
            ops[m.group(1)] = (m.group(2), re.findall(r"%[\w.]+", m.group(3)), m.group(4))

    def grows(value):
        """Whether `value` depends on the program id, a loop index or an index loaded from memory:
        whether it grows with the tensor, not only within one block."""
        todo, seen = [value], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v not in ops:
                if v[1:] not in sig:
                    return True   # a loop's index
                continue
            if ops[v][0] in ("tt.get_program_id", "tt.load"):
                return True
            todo += ops[v][1]
        return False

    def stride_of(value):
        """The stride argument `value` is (after splats, broadcasts and widenings), or None."""
        while value in ops and ops[value][0] in PASS_THROUGH:
            value = ops[value][1][0]
        name = value[1:]
        return name if name in sig and sig[name] == "i32" and name.startswith("s_") else None

    products = []
    for op, operands, types in ops.values():
        if op == "arith.muli" and len(operands) == 2:
            for stride, other in ((stride_of(x), y) for x, y in (operands, operands[::-1])):
                if stride and grows(other):
                    products.append([stride, "i64" if "i64" in types else "i32"])
    out[fn.__name__] = {"strides": sorted(n for n in sig if n.startswith("s_")), "products": products}
print(json.dumps(out))
'''


@needs_triton
def test_row_offsets_of_large_tensors_are_int64():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(found) == 6
    for kernel, r in found.items():
        small = INT32_STRIDES.get(kernel, {})
        narrow = sorted({s for s, width in r["products"] if width == "i32" and s not in small})
        assert not narrow, f"{kernel}: index * {', '.join(narrow)} formed in int32"
        wide = {s for s, width in r["products"] if width == "i64"}
        # Every stride of a large tensor is used, in int64 (an unused one would make the check vacuous).
        assert wide == set(r["strides"]) - set(small), f"{kernel}: int64 products with {sorted(wide)} only"


@needs_triton
def test_a_launch_is_wide_where_an_offset_passes_int32():
    from drcl_fast.kernels.offsets import wide
    width = 2**11
    big = torch.empty(2**20 + 1, width, device="meta")          # its last offset is 2**31 + 2047: no memory
    assert wide(big) and wide(big.t()) and wide(torch.zeros(3), big)
    assert not wide(torch.empty(2**20, width, device="meta"))   # offsets up to 2**31 - 1: int32 holds them
    assert not wide(torch.empty(1, width, device="meta").expand(2**22, width))   # one row's offsets
    assert not wide(torch.empty(0, 2**40, device="meta"))


@needs_triton
def test_a_wide_launch_computes_what_a_narrow_one_does(monkeypatch):
    """The int64 variants at small sizes (every launcher forced wide): the same values, bit for bit."""
    from drcl_fast.kernels import drcl_loss, gce, linear_relu, matmul, mixup_project
    from drcl_fast.kernels.precision import precision
    from tests.support import DEVICE, generator

    def randn(*shape):
        return torch.randn(*shape, generator=generator(sum(shape)), dtype=torch.float64).to(DEVICE).float()

    b, h, d, c = 7, 9, 6, 3
    x, w, bias, head, prior = randn(b, h), randn(h, h), randn(h), randn(d, h), randn(d, c)
    targets = torch.softmax(randn(b, c), dim=1)
    perm = torch.randperm(b, generator=generator(1)).to(DEVICE)

    def run() -> list[torch.Tensor]:
        hidden, head_w = x.clone().requires_grad_(), head.clone().requires_grad_()
        layer = linear_relu.linear_relu(hidden, w, bias, "triton")
        mixed, logits = mixup_project.MixupProject.apply(layer, head_w, perm, 0.9, prior)
        terms = drcl_loss.drcl_loss_terms(mixed, targets, logits, torch.linalg.pinv(prior.double()).float(), 0.5)
        loss = sum(terms) + gce.GCE.apply(logits, targets, 0.0)
        return [*terms, loss.detach(), *torch.autograd.grad(loss, (hidden, head_w))]

    with precision("fp32"):
        narrow = run()
        for module in (matmul, drcl_loss, gce, mixup_project):
            monkeypatch.setattr(module, "wide", lambda *tensors: True)
        wide = run()
    for n, w_ in zip(narrow, wide):
        assert torch.equal(n, w_)
