"""Every Triton launcher refuses a tensor of the wrong shape, dtype, device or layout before any kernel runs.

The refusal is a ``KernelInputError`` (a ``ValueError``) whose message starts with the launcher's and the
argument's names (kernels/boundary.py; docs/kernels.md, "Inputs"). On this CPU-only machine the wrong
device is a 'meta' tensor among CPU ones. Tiny sizes: only the accepted inputs reach a kernel (the
interpreter, on CPUs).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import pytest
import torch

from drcl_fast.errors import KernelInputError
from tests.support import DEVICE, HAVE_TRITON

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")

B, K, N, C = 3, 5, 6, 4   # rows, inner width, outer width, classes: no two alike, so a swap shows


class Case(NamedTuple):
    call: Callable
    args: dict                                  # valid arguments, by name
    wrong: dict[str, tuple[str, Callable]]      # kind -> (the argument changed, how)


def zeros(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


def meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


def grow(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tensor with one more entry along `dim`."""
    def wrong(t: torch.Tensor) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] += 1
        return torch.zeros(shape, dtype=t.dtype, device=t.device)
    return wrong


def to(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t.to(dtype)


def cases() -> dict[str, Case]:
    from drcl_fast.kernels import drcl_loss, gce, linear_relu, map_ranked, map_topk, matmul
    from drcl_fast.kernels import mixup_project as mp
    from drcl_fast.ops import restructured

    features, targets, pinv = zeros(B, K), torch.eye(C, device=DEVICE)[[0, 1, 2]], zeros(C, K) + 0.5
    layer = dict(x=zeros(B, K), weight=zeros(N, K), bias=zeros(N))
    ranked = dict(order=torch.tensor([[0, 1, 2], [2, 1, 0]], device=DEVICE),
                  query_labels=torch.tensor([0, 1], device=DEVICE),
                  gallery_labels=torch.tensor([0, 1, 1], device=DEVICE))
    perm = torch.tensor([2, 0, 1], device=DEVICE)
    return {
        "matmul": Case(lambda **a: matmul.matmul(**a), dict(a=zeros(B, K), b=zeros(K, N), bias=zeros(N),
                                                         row_sq=zeros(B)),
                       {"shape": ("b", grow(0)), "dtype": ("b", to(torch.float64)), "device": ("row_sq", meta)}),
        "linear_relu_forward": Case(lambda **a: linear_relu.linear_relu_forward(**a, impl="triton"), layer,
                                    {"shape": ("weight", grow(1)), "dtype": ("bias", to(torch.float64)),
                                     "device": ("weight", meta)}),
        "linear_relu": Case(lambda **a: linear_relu.linear_relu(**a), layer,
                            {"shape": ("bias", grow(0)), "dtype": ("weight", to(torch.int64)),
                             "device": ("bias", meta)}),
        "linear_relu_backward": Case(
            lambda **a: linear_relu.linear_relu_backward(**a, impl="triton", need_dx=True),
            dict(grad=zeros(B, N), x=zeros(B, K), weight=zeros(N, K), out=zeros(B, N)),
            {"shape": ("out", grow(0)), "dtype": ("x", to(torch.float64)), "device": ("out", meta)}),
        "mixup_project_forward": Case(
            lambda **a: mp.mixup_project_forward(**a, gamma=0.9),
            dict(hidden=zeros(B, N) + 1, head_weight=zeros(K, N) + 1, permutation=perm, prior=zeros(K, C)),
            {"shape": ("prior", grow(0)), "dtype": ("permutation", to(torch.float32)),
             "device": ("prior", meta)}),
        "mixup_project_backward": Case(
            lambda **a: mp.mixup_project_backward(**a, gamma=0.9, need_dh=True),
            dict(d_mixed=zeros(B, K), d_logits=zeros(B, C), hidden=zeros(B, N), head_weight=zeros(K, N),
                 z=zeros(B, K) + 1, sq=zeros(B) + K, permutation=perm, prior=zeros(K, C)),
            {"shape": ("sq", grow(0)), "dtype": ("z", to(torch.float64)), "device": ("z", meta)}),
        "pair_terms": Case(lambda **a: drcl_loss.pair_terms(**a),
                           dict(features=features, targets=targets, cs=restructured.prepare(features, targets, pinv)),
                           {"shape": ("targets", grow(0)), "dtype": ("targets", to(torch.int64)),
                            "device": ("targets", meta)}),
        "mse": Case(lambda **a: drcl_loss.mse(**a), dict(features=features, targets=targets, pinv=pinv),
                    {"shape": ("pinv", grow(1)), "dtype": ("pinv", to(torch.float64)), "device": ("pinv", meta)}),
        "assemble_feature_grad": Case(
            lambda **a: drcl_loss.assemble_feature_grad(**a),
            dict(features=features, pinv=pinv, nf=zeros(B) + 1, af=zeros(B, K), dnf=zeros(B), dp=zeros(B, C)),
            {"shape": ("dp", grow(1)), "dtype": ("dnf", to(torch.float64)), "device": ("af", meta)}),
        "drcl_loss_terms": Case(lambda **a: drcl_loss.drcl_loss_terms(**a, q=0.5),
                                dict(features=features, targets=targets, logits=zeros(B, C), pinv=pinv),
                                {"shape": ("logits", grow(1)), "dtype": ("logits", to(torch.float64)),
                                 "device": ("pinv", meta)}),
        "gce_forward": Case(lambda **a: gce.gce_forward(**a, q=0.5), dict(logits=zeros(B, C), targets=targets),
                            {"shape": ("targets", grow(1)), "dtype": ("targets", to(torch.int64)),
                             "device": ("targets", meta)}),
        "topk_indices": Case(lambda **a: map_topk.topk_indices(**a, top=2),
                             dict(query=zeros(2, K), gallery=zeros(N, K)),
                             {"shape": ("gallery", grow(1)), "dtype": ("gallery", to(torch.float64)),
                              "device": ("gallery", meta)}),
        "topk": Case(lambda **a: map_topk.topk(**a, top=2), dict(query=zeros(2, K), gallery=zeros(N, K)),
                     {"shape": ("gallery", grow(1)), "dtype": ("query", to(torch.float64)),
                      "device": ("gallery", meta)}),
        "average_precisions": Case(lambda **a: map_ranked.average_precisions(**a, skip_empty=False), ranked,
                                   {"shape": ("query_labels", grow(0)), "dtype": ("gallery_labels", to(torch.int32)),
                                    "device": ("gallery_labels", meta)}),
        "hits_at": Case(lambda **a: map_ranked.hits_at(**a), dict(ranked, cutoffs=torch.tensor([1, 3])),
                        {"shape": ("gallery_labels", lambda t: t[:, None]), "dtype": ("order", to(torch.float32)),
                         "device": ("query_labels", meta)}),
    }


LAUNCHERS = sorted(cases()) if HAVE_TRITON else []


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_valid_inputs_pass_the_checks(launcher):
    case = cases()[launcher]
    case.call(**case.args)


@pytest.mark.parametrize("kind", ["shape", "dtype", "device"])
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_wrong_input_is_refused_naming_launcher_and_argument(launcher, kind):
    case = cases()[launcher]
    name, wrong = case.wrong[kind]
    with pytest.raises(KernelInputError) as refused:
        case.call(**dict(case.args, **{name: wrong(case.args[name])}))
    assert isinstance(refused.value, ValueError)
    assert str(refused.value).startswith(f"{launcher}: {name} "), str(refused.value)


def test_messages_say_what_was_expected_and_what_came():
    case = cases()["pair_terms"]
    with pytest.raises(KernelInputError, match=r"^pair_terms: targets must be torch.float32 like features, "
                                               r"got torch.int64$"):
        case.call(**dict(case.args, targets=case.args["targets"].long()))
    with pytest.raises(KernelInputError, match=r"^pair_terms: targets must be B x C with B = 3 as in features, "
                                               r"got shape \(4, 4\)$"):
        case.call(**dict(case.args, targets=grow(0)(case.args["targets"])))
    device = case.args["features"].device
    with pytest.raises(KernelInputError, match=rf"^pair_terms: targets is on meta but features on {device}; pass "
                                               r"every tensor on one device$"):
        case.call(**dict(case.args, targets=meta(case.args["targets"])))


def test_layouts_a_kernel_assumes_are_refused():
    """Where the kernel is given a row stride only, or one stride for an input and the outputs made like it."""
    all_cases = cases()
    order = torch.tensor([[0, 1, 2], [2, 1, 0]], device=DEVICE)
    layouts = [
        ("average_precisions", "order", torch.stack([order, order], dim=2)[:, :, 0], "unit stride along its last"),
        ("pair_terms", "targets", all_cases["pair_terms"].args["targets"].t().contiguous().t(), "contiguous"),
        ("mse", "features", zeros(K, B).t(), "contiguous"),
        ("mixup_project_backward", "z", (zeros(K, B) + 1).t(), "contiguous"),
        ("matmul", "row_sq", zeros(B, 2)[:, 0], "unit stride"),
    ]
    for launcher, name, value, what in layouts:
        case = all_cases[launcher]
        with pytest.raises(KernelInputError, match=rf"^{launcher}: {name} must .*{what}.*pass {name}.contiguous\(\)"):
            case.call(**dict(case.args, **{name: value}))
    a = zeros(B, K)
    with pytest.raises(KernelInputError, match=r"^matmul: gate must have the strides of a"):
        all_cases["matmul"].call(a=a, b=zeros(K, N), gate=zeros(K, B).t())
