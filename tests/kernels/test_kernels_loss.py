"""The fused RSC loss (restructured PyTorch and Triton) and the Triton GCE against the reference.

Fresh random inputs at shapes that are not multiples of any block size; forward
terms and both gradients (features, logits) against a float64 reference, by the
rule of tests/support.py. Triton runs under TRITON_INTERPRET=1 on CPUs.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from drcl_fast import ops
from drcl_fast.ops import reference
from drcl_fast.runtime import backends
from tests.support import (DEVICE, assert_float64_equal, assert_within_rule, generator, needs_triton,
                                   rel_err)

ENGINES = ["restructured", pytest.param("triton", marks=needs_triton)]
NAMES = ["J_L", "J_D", "J_MSE", "dJ/dF~", "dJ/dlogits"]
# (B, D, C): every B in {1, 7, 64, 130}, D in {16, 100, 256}, C in {2, 3, 10, 80, 200}, and C > 256.
SHAPES = [(1, 16, 2), (7, 100, 3), (64, 256, 10), (130, 16, 80), (130, 100, 200), (7, 256, 80),
          (64, 16, 200), (130, 256, 3), (64, 100, 2), (7, 16, 300)]
WEIGHTS = torch.tensor([1.0, 0.1, 0.1], dtype=torch.float64)   # eta, alpha, beta
# The Triton interpreter computes log 0 and 0 * inf in numpy, which warns; those values are the point.
INTERPRETER_NONFINITE = "ignore:(divide by zero|invalid value) encountered:RuntimeWarning"


@pytest.fixture(autouse=True)
def exact_matrix_math():
    """The Triton kernels multiply in TF32 by default; these tests hold them to float32."""
    if importlib.util.find_spec("triton") is None:
        yield
        return
    from drcl_fast.kernels.precision import precision
    with precision("fp32"):
        yield


def loss_fn(engine: str):
    if engine == "triton":
        from drcl_fast.kernels import drcl_loss
        return drcl_loss.drcl_loss_terms
    from drcl_fast.ops import restructured
    return restructured.drcl_loss_terms


def batch(b: int, d: int, c: int, seed: int, labels: str = "one-hot", prior: str = "gaussian",
          empty_pairs: int = 0) -> list[torch.Tensor]:
    """A mixed batch in float64: f~, y~, f~ W and L = W+ for a random prior W (Gaussian, or
    orthonormal columns as SPL starts from; needs D >= C). The first `empty_pairs` rows and
    their Mixup partners have no class: those rows' y~ is 0."""
    g = generator(seed)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    perm = torch.randperm(b, generator=g)
    if labels == "one-hot":
        y = torch.eye(c, dtype=torch.float64)[torch.randint(0, c, (b,), generator=g)]
    else:
        y = (torch.rand(b, c, generator=g, dtype=torch.float64) < 0.3).double()
        y[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1.0   # at least one label each
    rows = torch.arange(empty_pairs)
    y[torch.cat([rows, perm[rows]])] = 0.0
    f, y = reference.feature_mixup(f, y, 0.9, perm)
    w = torch.randn(d, c, generator=g, dtype=torch.float64) / d ** 0.5
    if prior == "orthonormal":
        w = torch.linalg.qr(w)[0]
    return [t.to(DEVICE) for t in (f, y, f @ w, torch.linalg.pinv(w))]


def near_targets(y: torch.Tensor, pinv: torch.Tensor, gap: float) -> torch.Tensor:
    """Features at relative distance `gap` from their recast targets, as late in training."""
    r = y @ pinv
    noise = torch.randn(r.shape, generator=generator(1), dtype=torch.float64).to(DEVICE)
    return r + gap * noise * (r.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True))


def outputs(fn, f, y, logits, pinv, q) -> list[torch.Tensor]:
    """The three terms and the gradients of eta J_L + alpha J_D + beta J_MSE."""
    f, logits = f.clone().requires_grad_(), logits.clone().requires_grad_()
    terms = fn(f, y, logits, pinv, q)
    total = sum(w * t for w, t in zip(WEIGHTS.tolist(), terms))
    return [*(t.detach() for t in terms), *torch.autograd.grad(total, (f, logits))]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-D{}-C{}".format(*s))
@pytest.mark.parametrize("labels", ["one-hot", "multi-hot"])
def test_float32_terms_and_gradients_within_the_rule(engine, shape, labels):
    q = 0.0 if sum(shape) % 2 else 0.37          # the q = 0 limit and a q > 0 on every engine
    x64 = batch(*shape, seed=sum(shape), labels=labels)
    x32 = [t.float() for t in x64]
    ref64 = outputs(reference.drcl_loss_terms, *x64, q)
    torch32 = outputs(reference.drcl_loss_terms, *x32, q)
    assert_within_rule(outputs(loss_fn(engine), *x32, q), torch32, ref64, NAMES)


@pytest.mark.parametrize("shape, labels", [((600, 64, 10), "one-hot"), ((300, 32, 40), "multi-hot")],
                         ids=["B600-D64-C10", "B300-D32-C40-multi"])
def test_restructured_over_several_panels_within_the_rule(shape, labels):
    """Two panels, a short last one, and diagonal blocks split twice (CPU path only: the
    interpreter would take minutes over these many pairs)."""
    x64 = batch(*shape, seed=5, labels=labels)
    x32 = [t.float() for t in x64]
    assert_within_rule(outputs(loss_fn("restructured"), *x32, 0.5), outputs(reference.drcl_loss_terms, *x32, 0.5),
                       outputs(reference.drcl_loss_terms, *x64, 0.5), NAMES)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("gap", [0.1, 0.02])
@pytest.mark.parametrize("shape", [(64, 256, 10), (130, 100, 20), (130, 256, 200)],
                         ids=lambda s: "B{}-D{}-C{}".format(*s))
def test_features_near_their_recast_targets_within_the_rule(engine, gap, shape):
    """Late in training f~ nears r, and r - f~, x_ij - x_ji and a - b cancel: the hardest case for sums."""
    _, y, logits, pinv = batch(*shape, seed=shape[2])
    x64 = [near_targets(y, pinv, gap), y, logits, pinv]
    x32 = [t.float() for t in x64]
    assert_within_rule(outputs(loss_fn(engine), *x32, 0.5), outputs(reference.drcl_loss_terms, *x32, 0.5),
                       outputs(reference.drcl_loss_terms, *x64, 0.5), NAMES)


@pytest.mark.parametrize("shape", [(130, 256, 40), (64, 100, 80)], ids=lambda s: "B{}-D{}-C{}".format(*s))
@pytest.mark.parametrize("labels", ["one-hot", "multi-hot"])
@pytest.mark.parametrize("gap", [None, 0.02])
def test_restructured_with_p_from_the_logits_within_the_rule(shape, labels, gap):
    """A well-conditioned prior and logits = f~ W: P = f~ L^T comes from the logits (checked below)."""
    from drcl_fast.ops import restructured
    from drcl_fast.ops.pinv import pinv_core
    f, y, _, pinv = batch(*shape, seed=3, labels=labels, prior="orthonormal")
    if gap is not None:
        f = near_targets(y, pinv, gap)
    x64 = [f, y, f @ pinv.t(), pinv]   # W = L^T for orthonormal columns
    x32 = [t.float() for t in x64]
    p = restructured.coordinates(x32[0], x32[0].norm(dim=1), x32[2], x32[3], pinv_core(x32[3]))
    assert not torch.equal(p, x32[0] @ x32[3].t())   # the logits route ran
    assert_within_rule(outputs(loss_fn("restructured"), *x32, 0.5), outputs(reference.drcl_loss_terms, *x32, 0.5),
                       outputs(reference.drcl_loss_terms, *x64, 0.5), NAMES)


def test_p_comes_from_the_product_unless_the_logits_route_is_sound():
    from drcl_fast.ops import restructured
    from drcl_fast.ops.pinv import pinv_core
    f, y, _, pinv = [t.float() for t in batch(130, 256, 40, seed=4, prior="orthonormal")]
    w = pinv.t().contiguous()

    def coordinates(f, logits, pinv):
        p = restructured.coordinates(f, f.norm(dim=1), logits, pinv, pinv_core(pinv))
        return p, torch.equal(p, f @ pinv.t())

    p, direct = coordinates(f, f @ w, pinv)
    assert not direct and rel_err(p, f @ pinv.t()) < 1e-6
    off = f @ w
    off[17] *= 1.0 + 1e-3                       # one row's logits are not f~ W
    assert coordinates(f, off, pinv)[1]
    assert coordinates(f, torch.randn_like(off), pinv)[1]
    stretched = w.clone()
    stretched[:, 0] *= 3.0                      # cond(W) = 3: the route would triple the rounding
    assert coordinates(f, f @ stretched, ops.prior_pinv(stretched))[1]
    assert coordinates(f, f @ w[:, :16], ops.prior_pinv(w[:, :16].contiguous()))[1]   # C = 16 < 32


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", [(7, 100, 3), (130, 16, 200)], ids=lambda s: "B{}-D{}-C{}".format(*s))
def test_float64_matches_the_reference(engine, shape):
    x64 = batch(*shape, seed=5, labels="multi-hot")
    assert_float64_equal(outputs(loss_fn(engine), *x64, 1.0), outputs(reference.drcl_loss_terms, *x64, 1.0), NAMES)


def _pair_configs() -> list:
    if importlib.util.find_spec("triton") is None:
        return []
    from drcl_fast.kernels import drcl_loss
    return sorted(set(drcl_loss.PAIR_CONFIGS.values()))


@needs_triton
@pytest.mark.parametrize("config", _pair_configs(), ids=lambda c: "BLOCK{}-D{}-C{}".format(*c[:3]))
def test_every_gpu_pair_tiling_matches_the_reference(config, monkeypatch):
    """The tilings GPUs launch (the interpreter's own is larger), at sizes with two row blocks
    (an off-diagonal, mirrored tile), partial last tiles in B, D and C and several D and C chunks."""
    from drcl_fast.kernels import drcl_loss
    block, block_d, block_c, _ = config
    monkeypatch.setattr(drcl_loss, "INTERPRET_PAIR_CONFIG", config)
    shape = (block + 5, 2 * block_d + 3, block_c + 3)
    x64 = batch(*shape, seed=block + block_d, labels="multi-hot")
    x32 = [t.float() for t in x64]
    assert_within_rule(outputs(loss_fn("triton"), *x32, 0.0), outputs(reference.drcl_loss_terms, *x32, 0.0),
                       outputs(reference.drcl_loss_terms, *x64, 0.0), NAMES)
    assert_float64_equal(outputs(loss_fn("triton"), *x64, 0.5), outputs(reference.drcl_loss_terms, *x64, 0.5), NAMES)


def clamp_binding_batch(case: str) -> list[torch.Tensor]:
    """Rows where |a| |b| < 1e-6 for some pairs."""
    f, y, logits, pinv = batch(9, 16, 4, seed=11)
    f, y = f.clone(), y.clone()
    if case == "features and recast rows":    # a zero feature row, tiny feature and recast rows
        f[0] = 0.0
        f[1] *= 1e-4
        f[2] *= 3e-3
        y[3] *= 1e-7                           # nearly no label (exactly none would make J_L infinite)
        y[4] *= 1e-5
    else:                                      # only |r_i|^2 < 1e-6 < |r_i| |f_j|: the (i, i) pair binds
        y[3] *= 5e-4 / float((y[3] @ pinv).norm())
    return [f, y, logits, pinv]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ["features and recast rows", "one recast row"])
def test_the_cosine_clamp_where_it_binds(engine, case):
    x64 = clamp_binding_batch(case)
    f, y, _, pinv = x64
    nf, nr = f.norm(dim=1), (y @ pinv).norm(dim=1)
    products = torch.cat([torch.outer(nf, nf), torch.outer(nr, nf), torch.outer(nr, nr)])
    assert (products < reference.COS_EPS).any() and (products > reference.COS_EPS).any()
    ref = outputs(reference.drcl_loss_terms, *x64, 0.5)
    assert all(torch.isfinite(t).all() for t in ref)
    assert_float64_equal(outputs(loss_fn(engine), *x64, 0.5), ref, NAMES)


def empty_target_batch(case: str, labels: str) -> list[torch.Tensor]:
    """Multi-label rows can have no class: y~_i = 0 in one row, in several, or through Mixup (a row and its
    partner both empty; their other partners' y~ is then a tenth or nine tenths of a row)."""
    x = batch(33, 20, 40, seed=12, labels=labels, empty_pairs=2 if case == "a row and its partner" else 0)
    x[1] = x[1].clone()
    x[1][{"one row": [5], "several rows": [0, 5, 32], "a row and its partner": []}[case]] = 0.0
    return x


def assert_equal_with_nonfinite(got: list[torch.Tensor], want: list[torch.Tensor], names: list[str]) -> None:
    """float64 agreement to 1e-10, inf and NaN where the reference has them."""
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14, equal_nan=True, msg=lambda m: f"{name}: {m}")


@pytest.mark.filterwarnings(INTERPRETER_NONFINITE)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ["one row", "several rows", "a row and its partner"])
@pytest.mark.parametrize("labels", ["one-hot", "multi-hot"])
def test_target_rows_with_no_class_match_the_reference(engine, case, labels, monkeypatch):
    """r_i = 0: cos2 with it is 0 through the clamp, J_MSE finite. J_L is -log 0 = inf at q = 0, and its
    logits gradient on those rows 0 * inf = NaN for q < 1 (s = 0 whatever the logits), as in the reference."""
    from drcl_fast.ops import restructured
    x64 = empty_target_batch(case, labels)
    assert (x64[1].abs().sum(dim=1) == 0).any()
    # A zero unit row is exact: the restructured loss keeps its fast path (no B x B pairs).
    monkeypatch.setattr(restructured, "pairwise_terms", lambda *args: pytest.fail("pairwise_terms ran"))
    for q in (0.0, 0.5, 1.0):
        ref64 = outputs(reference.drcl_loss_terms, *x64, q)
        assert_equal_with_nonfinite(outputs(loss_fn(engine), *x64, q), ref64, NAMES)
        assert torch.isfinite(torch.stack(ref64[1:3])).all() and torch.isfinite(ref64[3]).all()
    x32 = [t.float() for t in x64]
    assert_within_rule(outputs(loss_fn(engine), *x32, 1.0), outputs(reference.drcl_loss_terms, *x32, 1.0),
                       ref64, NAMES)


@pytest.mark.parametrize("engine", ENGINES)
def test_gradcheck_float64(engine):
    f, y, logits, pinv = batch(5, 16, 3, seed=2, labels="multi-hot")
    fn = loss_fn(engine)

    def total(features, lg):
        return torch.stack(fn(features, y, lg, pinv, 0.3))

    assert torch.autograd.gradcheck(total, (f.requires_grad_(), logits.requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_values_without_gradients_are_the_same_terms(engine):
    x = batch(64, 100, 10, seed=3)
    with_grad = outputs(loss_fn(engine), *x, 0.5)[:3]
    with torch.no_grad():
        without = loss_fn(engine)(*x, 0.5)
    for a, b in zip(with_grad, without):
        assert rel_err(a, b) <= 1e-12


@pytest.mark.parametrize("b, d, c, restructured_runs", [(300, 64, 3, True), (64, 256, 80, False), (7, 16, 3, False)])
def test_auto_on_a_cpu_runs_the_restructured_loss_where_it_is_faster(monkeypatch, b, d, c, restructured_runs):
    """Small batches and many classes: the C-space work and the fixed cost outweigh the B x B work saved."""
    from drcl_fast.ops import restructured
    calls = []
    forward = restructured.ENGINE.forward
    monkeypatch.setattr(restructured.ENGINE, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    f, y, logits, pinv = [t.cpu() for t in batch(b, d, c, seed=4)]
    ops.drcl_loss(f.requires_grad_(), y, logits, pinv, 0.5, 0.1, 0.1, 1.0).backward()
    assert bool(calls) == restructured_runs and f.grad is not None


def test_where_the_restructured_loss_pays_off():
    """The rule against the measured grid (docs/kernels.md): a few cases each side of it."""
    from drcl_fast.ops.restructured import pays_off
    faster = [(1024, 2048, 200), (1024, 256, 200), (512, 256, 200), (256, 2048, 80), (140, 512, 10), (256, 64, 10)]
    slower = [(64, 256, 200), (140, 256, 80), (256, 256, 200), (64, 64, 10), (64, 2048, 80)]
    assert all(pays_off(*shape) for shape in faster) and not any(pays_off(*shape) for shape in slower)


def test_mismatched_shapes_are_named():
    f, y, logits, pinv = [t.float().cpu() for t in batch(7, 16, 3, seed=1)]
    with pytest.raises(ValueError, match=r"pinv \(C, D\).*pinv \(4, 16\)"):
        ops.drcl_loss_terms(f, y, logits, torch.zeros(4, 16), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        ops.drcl_loss_terms(f[0], y, logits, pinv, 0.5)


@needs_triton
def test_deterministic_mode_leaves_the_triton_kernels(monkeypatch):
    from drcl_fast.ops import restructured
    calls = []
    forward = restructured.ENGINE.forward
    monkeypatch.setattr(restructured.ENGINE, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    monkeypatch.setitem(backends.AUTO_PREFERENCE, torch.device(DEVICE).type, ("triton", "restructured", "torch"))
    f, y, logits, pinv = batch(300, 64, 3, seed=4)   # a size where the restructured loss pays off
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.warns(RuntimeWarning, match="deterministic"):
            ops.drcl_loss_terms(f, y, logits, pinv, 0.5)
    finally:
        torch.use_deterministic_algorithms(False)
    assert calls


def test_targets_that_need_gradients_get_them_from_the_reference():
    f, y, logits, pinv = [t.cpu() for t in batch(7, 16, 3, seed=6)]
    y = y.clone().requires_grad_()
    sum(ops.drcl_loss_terms(f, y, logits, pinv, 0.5, backend="restructured")).backward()
    want = y.grad.clone()
    y.grad = None
    sum(reference.drcl_loss_terms(f, y, logits, pinv, 0.5)).backward()
    torch.testing.assert_close(want, y.grad)


@needs_triton
@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("labels", ["one-hot", "multi-hot"])
@pytest.mark.parametrize("b, c", [(1, 2), (130, 3), (64, 200), (7, 300)])
def test_triton_gce_within_the_rule(q, labels, b, c):
    from drcl_fast.kernels.gce import GCE
    _, y, logits, _ = batch(b, 16, c, seed=b + c, labels=labels)
    logits = logits * 20.0     # confident rows: softmax far from uniform

    def run(fn, lg, t):
        lg = lg.clone().requires_grad_()
        loss = fn(lg, t, q)
        return [loss.detach(), torch.autograd.grad(loss, lg)[0]]

    ref64 = run(reference.gce_loss, logits, y)
    torch32 = run(reference.gce_loss, logits.float(), y.float())
    assert_within_rule(run(GCE.apply, logits.float(), y.float()), torch32, ref64, ["GCE", "dGCE/dlogits"])
    assert_float64_equal(run(GCE.apply, logits, y), ref64, ["GCE", "dGCE/dlogits"])


@pytest.mark.filterwarnings(INTERPRETER_NONFINITE)
@needs_triton
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 1.5])
def test_triton_gce_of_a_target_row_with_no_class(q):
    """s = 0 on that row: GCE inf at q = 0, 1/q else; its gradient NaN for q < 1 and 0 from q = 1, as the reference's."""
    from drcl_fast.kernels.gce import GCE
    _, y, logits, _ = batch(9, 16, 5, seed=2, labels="multi-hot")
    y = y.clone()
    y[4] = 0.0

    def run(fn):
        lg = logits.clone().requires_grad_()
        loss = fn(lg, y, q)
        return [loss.detach(), torch.autograd.grad(loss, lg)[0]]

    assert_equal_with_nonfinite(run(GCE.apply), run(reference.gce_loss), ["GCE", "dGCE/dlogits"])


@needs_triton
def test_triton_gce_gradcheck_float64():
    from drcl_fast.kernels.gce import GCE
    _, y, logits, _ = batch(6, 16, 5, seed=9)
    for q in (0.0, 0.7):
        assert torch.autograd.gradcheck(lambda lg: GCE.apply(lg, y, q), (logits.clone().requires_grad_(),))


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
def test_compiled_loss_where_the_clamp_binds_matches_the_reference(monkeypatch, tmp_path):
    """Under torch.compile the loss is a custom op, which runs below autograd: the batches where a pair's
    clamp binds (and those with a target row of no class) must be handled there without it."""
    from drcl_fast.kernels import custom_op
    if not custom_op.AVAILABLE:
        pytest.skip("torch.library.custom_op needs torch >= 2.4")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    compiled = torch.compile(lambda f, y, logits, pinv, q: torch.stack(
        ops.drcl_loss_terms(f, y, logits, pinv, q, backend="restructured")), fullgraph=True)
    no_class = batch(9, 16, 4, seed=11)
    no_class[1] = no_class[1].clone()
    no_class[1][3] = 0.0
    for x64 in (clamp_binding_batch("features and recast rows"), clamp_binding_batch("one recast row"), no_class):
        assert_equal_with_nonfinite(outputs(compiled, *x64, 0.5), outputs(reference.drcl_loss_terms, *x64, 0.5), NAMES)


@pytest.mark.parametrize("engine", ENGINES)
def test_registered_custom_op_passes_opcheck(engine):
    from drcl_fast.kernels import custom_op
    if not custom_op.AVAILABLE:
        pytest.skip("torch.library.custom_op needs torch >= 2.4")
    f, y, logits, pinv = [t.float() for t in batch(7, 16, 3, seed=8)]
    loss_fn(engine)   # imports the engine's module, which registers its op
    torch.library.opcheck(getattr(torch.ops.drcl_fast, f"drcl_loss_{engine}").default,
                          (f.requires_grad_(), y, logits.requires_grad_(), pinv, 0.5))


# Compiled for sm_90 in a subprocess (the test process runs the interpreter): the float64 variant of
# each kernel that takes float scalars must take them as .f64 parameters, and the float32 variants
# must not use the GPU's approximate division, square root or exponential (docs/kernels.md, "What
# the interpreter does not see"), nor acq_rel atomics for the loss's reductions.
PTX_PROBE = r'''
import inspect, json, os, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import _normalize_ty
from drcl_fast.kernels import drcl_loss, gce
from drcl_fast.kernels import mixup_project as mp
FLOATS = {"gamma", "scale", "eps", "grad_scale", "q", "inv_b"}   # a GPU launch makes a Python float .f32
APPROX = r"\b(div\.full\.f32|div\.approx\.f32|sqrt\.approx\.\w+|ex2\.approx\.\w+)"
out = []
for dt in ("fp32", "fp64"):
    acc = tl.float64 if dt == "fp64" else tl.float32
    prec = "ieee" if dt == "fp64" else "tf32"
    jobs = [(mp._mix_project_fwd, dict(BLOCK_B=32, BLOCK_D=64, BLOCK_C=32)),
            (mp._mix_project_bwd, dict(BLOCK_B=32, BLOCK_D=64, BLOCK_C=32, ONE_CHUNK=False)),
            (drcl_loss._pair_kernel, dict(GRAD=True, BLOCK=64, BLOCK_D=64, BLOCK_C=32)),
            (drcl_loss._mse_kernel, dict(GRAD=True, BLOCK_B=32, BLOCK_D=64, BLOCK_C=32)),
            (gce._gce_kernel, dict(Q_ZERO=False, BLOCK_B=4, BLOCK_C=1024))]
    for fn, consts in jobs:
        consts = {**{k: v for k, v in (("PRECISION", prec), ("ACC", acc)) if k in fn.arg_names}, **consts,
                  "WIDE": False}
        notes = {k: _normalize_ty(v) for k, v in inspect.get_annotations(fn.fn).items()}
        sig = {n: "constexpr" if n in consts else ("*i64" if "perm" in n else "*" + dt) if n.endswith("_ptr")
               else notes.get(n) or ("fp32" if n in FLOATS else "i32") for n in fn.arg_names}
        ptx = triton.compile(triton.compiler.ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        out.append({"kernel": fn.__name__, "dtype": dt, "float_params": re.findall(r"\.param \.(f32|f64) ", ptx),
                    "approx": sorted(set(re.findall(APPROX, ptx))),
                    "acq_rel_atomics": len(re.findall(r"\batom\.\S*acq_rel", ptx))})
print(json.dumps(out))
'''


@needs_triton
def test_compiled_kernels_take_float64_scalars_and_round_to_nearest():
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", PTX_PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 10
    for r in results:
        name = f"{r['kernel']} ({r['dtype']})"
        assert r["float_params"] and set(r["float_params"]) == {"f64"}, f"{name}: float params {r['float_params']}"
        if r["dtype"] == "fp32":
            assert not r["approx"], f"{name}: approximate {r['approx']}"
        assert r["acq_rel_atomics"] == 0, f"{name}: {r['acq_rel_atomics']} acq_rel atomics"
