"""Selective Prior Learning: learn a class prior W_k per modality, keep the best one."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from drcl_fast import ops
from drcl_fast.config import DEFAULT_PRECISION
from drcl_fast.errors import ConfigError, NonFiniteLossError
from drcl_fast.model import seeded_encoder
from drcl_fast.ops.restructured import gce_value_and_grad
from drcl_fast.runtime import interrupt
from drcl_fast.runtime.precision import compute_dtype
from drcl_fast.runtime.progress import epoch_bar
from drcl_fast.training.encoder_step import EncoderStep, step_for
from drcl_fast.training.modality import EpochHook, ModalityData, StopHook, encode, epoch_draws, run_batches
from drcl_fast.training.optim import adam

log = logging.getLogger("drcl_fast.epochs")  # one line per epoch; the CLI keeps it off the console


def initial_prior(output_dim: int, num_classes: int, seed: int) -> torch.Tensor:
    """W0: the first C columns of a random D x D orthogonal matrix."""
    generator = torch.Generator().manual_seed(seed)
    square = torch.nn.init.orthogonal_(torch.empty(output_dim, output_dim), generator=generator)
    return square[:, :num_classes].contiguous()


@dataclass
class SPLResult:
    """What SPL learned on one modality."""

    modality: str
    best_prior: torch.Tensor          # W_k at the best-scoring epoch (D x C, CPU)
    final_prior: torch.Tensor         # W_k after the last epoch (what the released code returns)
    best_epoch: int                   # 1-based
    scores: dict[int, float] = field(default_factory=dict)  # epoch (1-based) -> S_k(e)

    @property
    def best_score(self) -> float:
        return self.scores[self.best_epoch]

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SPLResult":
        return cls(**state)


@torch.no_grad()
def quality_score(encoder: torch.nn.Module, prior: torch.Tensor, x: torch.Tensor, targets: torch.Tensor
                  ) -> torch.Tensor:
    """S_k: mean probability the model gives to the true classes, over the whole split (0-dim, on x's device)."""
    probabilities = torch.softmax(encode(encoder, x) @ prior, dim=1)
    return (probabilities * targets).sum(dim=1).mean()


class SPLStep:
    """One SPL unit's training step: GCE of a batch, with its gradients in the encoder's and the prior's .grad.

    The route is chosen once, when the unit starts (``step_for``: device, backend, precision):
    "autograd" (the ops as the backend picks them, backward by autograd) or "by hand" (the encoder's
    layers, the projection and GCE forward and backward in closed form; in C++ where the extension is
    built, else in Python).

    Args:
        encoder: the unit's encoder.
        closed_form: its closed-form step, or None for the autograd route.
        prior: W_k, trained with the encoder.
        backend: the run's backend.
    """

    def __init__(self, encoder: torch.nn.Module, closed_form: EncoderStep | None, prior: torch.Tensor,
                 backend: str) -> None:
        self.encoder, self.closed_form, self.prior, self.backend = encoder, closed_form, prior, backend
        self.route, self._run = ("autograd", self._through_autograd) if closed_form is None else \
            ("by hand", self._by_hand)

    def __call__(self, x: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
        return self._run(x, targets, q)

    def _through_autograd(self, x: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
        loss = ops.gce_loss(self.encoder(x) @ self.prior, targets, q, backend=self.backend)
        loss.backward()
        return loss

    def _by_hand(self, x: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
        prior = self.prior
        found = self.closed_form.native_spl(x, targets, prior, q)
        if found is not None:
            return found

        def tail_by_hand(unit: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
            # GCE in closed form: where a step exists, the gce_loss op runs its reference (closed_form_applies).
            loss, d_logits = gce_value_and_grad(unit @ prior, targets, q)
            d_prior = unit.t() @ d_logits
            if prior.grad is None:
                prior.grad = d_prior
            else:
                prior.grad.add_(d_prior)
            return loss, None, d_logits @ prior.t()

        return self.closed_form.loss_and_grads_by_hand(x, tail_by_hand)[0]


def learn_prior(data: ModalityData, w0: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                hidden_dim: int, sample_interval: int, seed: int, backend: str = "auto",
                precision: str = DEFAULT_PRECISION, progress: bool = True, resume: dict[str, Any] | None = None,
                on_epoch: EpochHook | None = None, on_stop: StopHook | None = None) -> SPLResult:
    """Train F_k and W_k (initialised at W0) with GCE; score S_k(e) after sampled epochs.

    `on_epoch`, `on_stop` and `resume`: as ``modality.EpochHook`` says.
    """
    device = data.train_x.device
    encoder = seeded_encoder(data.input_dim, hidden_dim, w0.shape[0], seed, device, compute_dtype(precision))
    prior = torch.nn.Parameter(w0.clone().to(device))
    optimizer = adam([*encoder.parameters(), prior], lr)
    step = SPLStep(encoder, step_for(encoder, backend, device), prior, backend)
    generator = torch.Generator().manual_seed(seed)
    result = SPLResult(data.name, w0.clone(), w0.clone(), best_epoch=0)
    start, first_batch, partial = 0, 0, None
    if resume is not None:
        encoder.load_state_dict(resume["encoder"])
        with torch.no_grad():
            prior.copy_(resume["prior"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        result, start = SPLResult.from_state(resume["result"]), resume["epoch"]
        # Stopped part-way through epoch start + 1: the generator is as before its draws.
        first_batch, partial = resume.get("batch", 0), resume.get("partial")
    best_prior = result.best_prior.to(device)   # on the device until the run ends: no transfer per epoch

    def host_result() -> SPLResult:
        result.best_prior, result.final_prior = best_prior.cpu().clone(), prior.detach().cpu().clone()
        return result

    def snapshot() -> dict[str, Any]:
        return {"epoch": epoch + 1, "encoder": encoder.state_dict(), "prior": prior.detach().cpu(),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "result": host_result().to_state()}

    bar = epoch_bar(epochs, f"SPL {data.name}", progress, start)
    for epoch in bar:
        q = ops.gce_q(epoch)
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on device: no sync per batch
        if partial is not None:   # the batches before first_batch, as the stopped run summed them
            total.copy_(partial["total"])
        drawn_from = generator.get_state()
        batches, _ = epoch_draws(data.train_x.shape[0], batch_size, generator, device)

        def one_batch(b: int) -> None:
            idx = batches[b]
            optimizer.zero_grad(set_to_none=True)
            loss = step(data.train_x[idx], data.train_t[idx], q)
            optimizer.step()
            total.add_(loss.detach().double())

        stopped = run_batches(first_batch, batches.shape[0], device, one_batch)
        if stopped is not None:   # saved outside the loop, which reads nothing back from the device
            if on_stop is not None:
                on_stop(lambda: {**snapshot(), "epoch": epoch, "batch": stopped, "generator": drawn_from,
                                 "partial": {"total": total.cpu()}})
            interrupt.check()
        first_batch, partial = 0, None
        sampled = (epoch + 1) % sample_interval == 0
        epoch_values = [total.reshape(1) / max(batches.shape[0], 1)]
        if sampled:
            epoch_values.append(quality_score(encoder, prior, data.train_x, data.train_t).double().reshape(1))
        host = torch.cat(epoch_values).tolist()   # the epoch's one transfer
        mean_loss = host[0]
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(_non_finite_message(data, epoch + 1, mean_loss))
        line = f"SPL {data.name} epoch {epoch + 1}/{epochs}: gce={mean_loss:.5f} q={q:.2f}"
        if sampled:
            score = host[1]
            result.scores[epoch + 1] = score
            if result.best_epoch == 0 or score > result.best_score:
                result.best_epoch = epoch + 1
                best_prior = prior.detach().clone()
            line += f" score={score:.5f} (best {result.best_score:.5f} @ {result.best_epoch})"
            bar.set_postfix(score=f"{score:.4f}")
        log.info(line)
        if on_epoch is not None:
            on_epoch(epoch + 1, snapshot)
    return host_result()


def _non_finite_message(data: ModalityData, epoch: int, loss: float) -> str:
    """What went wrong and what to do: a target row with no label diverges at any learning rate."""
    where = f"SPL on modality {data.name!r}, epoch {epoch}: the GCE loss J_L is {loss}"
    unlabelled = int((data.train_t.sum(dim=1) == 0).sum())
    if unlabelled:
        return (f"{where}: {unlabelled} training row(s) with no label (all-zero target rows, whose GCE at "
                f"q = 0 is -log 0 = inf); leave them out, as ModalityData.from_dataset does, or give them "
                f"their classes")
    return f"{where}; lower --lr_SPL"


def select_prior(results: list[SPLResult], released_slip: bool = False) -> tuple[int, torch.Tensor]:
    """The modality with the largest S_k and its W_k (best epoch; final epoch with the released slip)."""
    scored = [r for r in results if r.scores]
    if not scored:
        raise ConfigError("SPL scored no epoch: sample_interval is larger than the number of SPL epochs")
    choice = max(range(len(results)), key=lambda k: results[k].best_score if results[k].scores else float("-inf"))
    chosen = results[choice]
    return choice, (chosen.final_prior if released_slip else chosen.best_prior)
