"""The RSC loss as one batch has it, forward and backward, for the loss benchmarks on either device."""
from __future__ import annotations

import statistics
import time

import torch

from drcl_fast import ops


def loss_inputs(b: int, d: int, c: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(f~, y~, f~ W, L) as one RSC batch has them: a mixed batch of unit rows (gamma = 0.9), mixed one-hot
    targets, the logits against an orthonormal prior W and L = W+."""
    g = torch.Generator().manual_seed(seed)
    prior = torch.linalg.qr(torch.randn(d, c, generator=g))[0]
    perm = torch.randperm(b, generator=g)
    f = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    y = torch.eye(c)[torch.randint(0, c, (b,), generator=g)]
    f, y = ops.feature_mixup(f, y, 0.9, perm)
    return f, y, f @ prior, ops.prior_pinv(prior)


def forward_backward(impl: str, f: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, pinv: torch.Tensor
                     ) -> torch.Tensor:
    """J = J_L + 0.1 J_D + 0.1 J_MSE at q = 0.5 through backend `impl`, and one backward."""
    f, logits = f.detach().requires_grad_(), logits.detach().requires_grad_()
    loss = ops.drcl_loss(f, y, logits, pinv, 0.5, alpha=0.1, beta=0.1, eta=1.0, backend=impl)
    loss.backward()
    return loss.detach()


def alternated_medians(impls: tuple[str, ...], inputs: tuple[torch.Tensor, ...], rounds: int) -> dict[str, float]:
    """Median seconds of `forward_backward` per implementation, the implementations timed in turn `rounds`
    times: a shared machine speeds up and slows down over seconds, and alternation exposes each
    implementation to the same drift, so their ratio holds where two timings one after the other would not."""
    seconds: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl, times in seconds.items():
            start = time.perf_counter()
            forward_backward(impl, *inputs)
            times.append(time.perf_counter() - start)
    return {impl: statistics.median(times) for impl, times in seconds.items()}
