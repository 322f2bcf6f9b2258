"""Reversible Semantic Consistency learning for one modality, with model selection."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from drcl_fast import ops
from drcl_fast.ops import restructured
from drcl_fast.config import DEFAULT_PRECISION
from drcl_fast.errors import NonFiniteLossError
from drcl_fast.model import Encoder, encoder_from_state, seeded_encoder
from drcl_fast.runtime import interrupt
from drcl_fast.runtime.precision import compute_dtype
from drcl_fast.runtime.progress import epoch_bar
from drcl_fast.training.encoder_step import EncoderStep, step_for
from drcl_fast.training.modality import EpochHook, ModalityData, StopHook, encode, epoch_draws, run_batches
from drcl_fast.training.optim import adam

log = logging.getLogger("drcl_fast.epochs")  # one line per epoch; the CLI keeps it off the console

TERMS = ("J_L", "J_D", "J_MSE")
NEVER = 2 ** 62  # first_bad value of a term that stayed finite all epoch


@dataclass
class RSCSettings:
    """The hyperparameters of one modality's RSC run."""

    lr: float
    epochs: int
    batch_size: int
    hidden_dim: int
    alpha: float = 0.1
    beta: float = 0.1
    eta: float = 1.0
    gamma: float = 0.9
    sample_interval: int = 1
    seed: int = 1
    backend: str = "auto"
    precision: str = DEFAULT_PRECISION

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return compute_dtype(self.precision)


@dataclass
class RSCResult:
    """The selected epoch's test outputs and the run's history."""

    modality: str
    test_embeddings: np.ndarray       # F_k(X_test) at the selected epoch (n_test x D)
    test_probabilities: np.ndarray    # softmax(F_k(X_test) W)
    test_labels: np.ndarray
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    encoder_state: dict[str, torch.Tensor] = field(default_factory=dict)

    ARRAYS: ClassVar[tuple[str, ...]] = ("test_embeddings", "test_probabilities", "test_labels")

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain values only, so checkpoints load with weights_only=True."""
        state = dataclasses.asdict(self)
        state.update({name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in self.ARRAYS})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RSCResult":
        return cls(**{**state, **{name: state[name].numpy() for name in cls.ARRAYS}})


def objective(terms: tuple[torch.Tensor, ...], s: RSCSettings) -> torch.Tensor:
    j_l, j_d, j_mse = terms
    return s.eta * j_l + s.alpha * j_d + s.beta * j_mse


LossTerms = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def batch_loss(encoder: Encoder, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor,
               prior: torch.Tensor, pinv: torch.Tensor, q: float, s: RSCSettings, loss_terms: LossTerms | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """J of one training batch and its terms: encode, Mixup, project by W, recast, loss.

    `s.backend` runs the whole chain: with "triton", the encoder's layers, Mixup and
    the projection are fused kernels as well as the loss. `loss_terms` is the loss's
    implementation where the caller has chosen it (``RSCStep``); else the op dispatches.
    """
    mixed_f, logits = encoder.mixed_forward(x, permutation, s.gamma, prior, s.backend)
    return mixed_loss(mixed_f, logits, targets, permutation, pinv, q, s, loss_terms)


def mixed_loss(mixed_f: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor,
               pinv: torch.Tensor, q: float, s: RSCSettings, loss_terms: LossTerms | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """J and its terms from the mixed batch f~ and its logits f~ W: the targets mixed alike, recast, loss."""
    mixed_t = ops.mix_rows(targets, s.gamma, permutation)
    if loss_terms is None:
        terms = ops.drcl_loss_terms(mixed_f, mixed_t, logits, pinv, q, backend=s.backend)
    else:
        terms = loss_terms(mixed_f, mixed_t, logits, pinv, q)
    return objective(terms, s), terms


class RSCStep:
    """One RSC unit's training step: J of a batch and its terms, with J's gradients in the encoder's .grad.

    The route is chosen once, when the unit starts, from the device, the backend, the precision (the
    encoder's) and the batch's shape; each batch then runs straight down it:

    - "autograd": the encoder's ops as the backend picks them (fused Triton kernels on a GPU), backward
      by autograd;
    - "closed form": the encoder's layers forward and backward by hand (``EncoderStep``), Mixup, the
      projection and the loss under autograd;
    - "by hand": all of it by hand, the loss forming its own gradients (the restructured engine); in
      C++ where the extension is built. A batch whose recast norms come near the loss's clamp (the C++
      step checks) takes the Python step instead, which runs the exact pairwise terms.

    Args:
        encoder: the unit's encoder.
        closed_form: its closed-form step (``step_for``), or None for the autograd route.
        prior, pinv: the frozen prior W and L = W+.
        s: the unit's settings; its batches have ``s.batch_size`` rows (the last partial one is dropped).
        targets: the unit's training targets (their device and dtype decide the loss's implementation).
    """

    def __init__(self, encoder: Encoder, closed_form: EncoderStep | None, prior: torch.Tensor,
                 pinv: torch.Tensor, s: RSCSettings, targets: torch.Tensor) -> None:
        self.encoder, self.closed_form, self.prior, self.pinv, self.s = encoder, closed_form, prior, pinv, s
        self.loss_terms = ops.drcl_loss_implementation(s.batch_size, prior.shape[0], targets, pinv, s.backend)
        if closed_form is None:
            self.route, self._run = "autograd", self._through_autograd
        elif ops.forms_gradients(self.loss_terms):
            self.route, self._run = "by hand", self._by_hand
        else:
            self.route, self._run = "closed form", self._closed_form_layers

    def __call__(self, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor, q: float
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self._run(x, targets, permutation, q)

    def _through_autograd(self, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor, q: float
                          ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        loss, terms = batch_loss(self.encoder, x, targets, permutation, self.prior, self.pinv, q, self.s,
                                 self.loss_terms)
        loss.backward()
        return loss, terms

    def _closed_form_layers(self, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor, q: float
                            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        def tail(unit: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            mixed_f = ops.mix_rows(unit, self.s.gamma, permutation)
            return mixed_loss(mixed_f, mixed_f @ self.prior, targets, permutation, self.pinv, q, self.s,
                              self.loss_terms)

        return self.closed_form.loss_and_grads(x, tail)

    def _by_hand(self, x: torch.Tensor, targets: torch.Tensor, permutation: torch.Tensor, q: float
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        s, prior, pinv = self.s, self.prior, self.pinv
        found = self.closed_form.native_rsc(x, targets, permutation, prior, pinv, q, s.gamma,
                                            (s.eta, s.alpha, s.beta))
        if found is not None:
            return found

        def tail_by_hand(unit: torch.Tensor
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
            mixed_f = ops.mix_rows(unit, s.gamma, permutation)
            weights = torch.tensor([s.eta, s.alpha, s.beta], dtype=unit.dtype)
            stacked, d_mixed, d_logits = restructured.drcl_loss_gradients(
                mixed_f, ops.mix_rows(targets, s.gamma, permutation), mixed_f @ prior, pinv, q, weights)
            d_mixed.addmm_(d_logits, prior.t())   # through the logits f~ W
            # Through Mixup, gamma f + (1 - gamma) f[pi]: row pi_i also receives (1 - gamma) of row i's gradient.
            d_unit = torch.mul(d_mixed, s.gamma).index_add_(0, permutation, d_mixed, alpha=1.0 - s.gamma)
            terms = tuple(stacked.unbind())
            return objective(terms, s), terms, d_unit

        return self.closed_form.loss_and_grads_by_hand(x, tail_by_hand)


def rsc_step(encoder: Encoder, prior: torch.Tensor, pinv: torch.Tensor, s: RSCSettings,
             targets: torch.Tensor) -> RSCStep:
    """The unit's step, its route chosen now (``RSCStep``)."""
    return RSCStep(encoder, step_for(encoder, s.backend, targets.device), prior, pinv, s, targets)


def train_rsc(data: ModalityData, prior: torch.Tensor, s: RSCSettings, progress: bool = True,
              pinv: torch.Tensor | None = None, resume: dict[str, Any] | None = None,
              on_epoch: EpochHook | None = None, on_stop: StopHook | None = None) -> RSCResult:
    """Train a fresh F_k against the frozen prior W; keep test outputs of the lowest validation loss.

    `on_epoch`, `on_stop` and `resume`: as ``modality.EpochHook`` says.
    """
    device = data.train_x.device
    prior = prior.to(device=device, dtype=torch.float32)
    pinv = (ops.prior_pinv(prior) if pinv is None else pinv).to(device)
    encoder = seeded_encoder(data.input_dim, s.hidden_dim, prior.shape[0], s.seed, device, s.compute_dtype)
    optimizer = adam(encoder.parameters(), s.lr)
    step = rsc_step(encoder, prior, pinv, s, data.train_t)
    generator = torch.Generator().manual_seed(s.seed)
    best: _Selection | None = None
    history: list[dict[str, float]] = []
    start, first_batch, partial = 0, 0, None
    if resume is not None:
        encoder.load_state_dict(resume["encoder"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        best = None if resume["best"] is None else \
            _Selection.restore(RSCResult.from_state(resume["best"]), s.compute_dtype)
        history, start = list(resume["history"]), resume["epoch"]
        # Stopped part-way through epoch start + 1: the generator is as before its draws.
        first_batch, partial = resume.get("batch", 0), resume.get("partial")

    def snapshot() -> dict[str, Any]:
        return {"epoch": epoch + 1, "encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "history": history,
                "best": None if best is None else best.result(data, prior).to_state()}

    bar = epoch_bar(s.epochs, f"RSC {data.name}", progress, start)
    for epoch in bar:
        q = ops.gce_q(epoch + 1)
        # Kept on the device until the epoch ends, so no batch waits for the host: term sums, and
        # the first batch at which each term stopped being finite (a NaN spreads to every term a
        # batch later).
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        first_bad = torch.full((len(TERMS),), NEVER, dtype=torch.float64, device=device)
        if partial is not None:   # the batches before first_batch, as the stopped run summed them
            sums.copy_(partial["sums"])
            first_bad.copy_(partial["first_bad"])
        drawn_from = generator.get_state()
        batches, permutations = epoch_draws(data.train_x.shape[0], s.batch_size, generator, device, mixup=True)

        def one_batch(b: int) -> None:
            nonlocal first_bad
            idx = batches[b]
            optimizer.zero_grad(set_to_none=True)
            loss, terms = step(data.train_x[idx], data.train_t[idx], permutations[b], q)
            optimizer.step()
            values = torch.stack([t.detach() for t in terms])
            sums.add_(torch.cat([loss.detach().reshape(1), values]).double())
            first_bad = torch.where(torch.isfinite(values), first_bad, first_bad.clamp(max=b + 1))

        stopped = run_batches(first_batch, batches.shape[0], device, one_batch)
        if stopped is not None:   # saved outside the loop, which reads nothing back from the device
            if on_stop is not None:
                on_stop(lambda: {**snapshot(), "epoch": epoch, "batch": stopped, "generator": drawn_from,
                                 "partial": {"sums": sums.cpu(), "first_bad": first_bad.cpu()}})
            interrupt.check()
        first_batch, partial = 0, None
        sampled = (epoch + 1) % s.sample_interval == 0
        epoch_values = [sums / max(batches.shape[0], 1), first_bad]
        if sampled:
            epoch_values.append(validation_loss(encoder, data, prior, pinv, q, s).double().reshape(1))
        host = torch.cat(epoch_values).tolist()   # the epoch's one transfer
        means, bad, val = host[:4], host[4:4 + len(TERMS)], host[4 + len(TERMS):]
        record = {"epoch": epoch + 1, "J": means[0], **dict(zip(TERMS, means[1:]))}
        if sampled:
            record["val"] = val[0]
        _stop_if_not_finite(data.name, record, [int(v) for v in bad])
        if sampled:
            if best is None or record["val"] < best.val_loss:
                best = _Selection.of(encoder, epoch + 1, record["val"])
            bar.set_postfix(J=f"{record['J']:.4f}", val=f"{record['val']:.4f}")
        history.append(record)
        log.info(_epoch_line(data.name, s.epochs, record, best))
        if on_epoch is not None:
            on_epoch(epoch + 1, snapshot)
    if best is None:  # no epoch was sampled: keep the last one, as selection had nothing to compare
        best = _Selection.of(encoder, s.epochs, float("nan"))
    result = best.result(data, prior)
    result.history = history
    return result


def reselect_on(data: ModalityData, resume: dict[str, Any], prior: torch.Tensor, s: RSCSettings) -> dict[str, Any]:
    """`resume` with its selected epoch's test outputs recomputed on `data`'s test split.

    For a state trained against a stand-in test split (the learning-rate search's): the
    selected weights embed the real one as the uninterrupted run did at that epoch.
    """
    if resume["best"] is None:
        return resume
    best = RSCResult.from_state(resume["best"])
    selection = _Selection(best.best_epoch, best.best_val_loss, best.encoder_state, s.compute_dtype)
    prior = prior.to(device=data.train_x.device, dtype=torch.float32)
    return {**resume, "best": selection.result(data, prior).to_state()}


def _stop_if_not_finite(name: str, record: dict[str, float], first_bad: list[int]) -> None:
    """Stop with the epoch, the term that went first and the batch it happened in."""
    if all(math.isfinite(v) for k, v in record.items() if k != "epoch"):
        return
    where = f"RSC on modality {name!r}, epoch {record['epoch']}"
    if min(first_bad) == NEVER:
        raise NonFiniteLossError(f"{where}: the validation loss is {record['val']} although training was "
                                 f"finite; check the validation features")
    batch = min(first_bad)
    culprits = [term for term, b in zip(TERMS, first_bad) if b == batch]
    raise NonFiniteLossError(f"{where}: non-finite {' and '.join(culprits)} at batch {batch}; "
                             f"lower this modality's --lr")


@torch.no_grad()
def validation_loss(encoder: torch.nn.Module, data: ModalityData, prior: torch.Tensor,
                    pinv: torch.Tensor, q: float, s: RSCSettings) -> torch.Tensor:
    """J on the whole validation split, unmixed (a 0-dim tensor on the training device)."""
    f = encode(encoder, data.valid_x)
    return objective(ops.drcl_loss_terms(f, data.valid_t, f @ prior, pinv, q, backend=s.backend), s)


@dataclass
class _Selection:
    """The selected epoch's weights, kept on the training device until the run ends, and its test
    outputs, encoded once they are asked for: a later epoch that validates better replaces the
    selection without the test split ever being encoded for it."""

    epoch: int
    val_loss: float
    encoder_state: dict[str, torch.Tensor]
    compute_dtype: torch.dtype | None           # the run's products' (Encoder.compute_dtype)
    outputs: tuple[torch.Tensor, torch.Tensor] | None = None   # (embeddings, probabilities) once encoded

    @classmethod
    @torch.no_grad()
    def of(cls, encoder: Encoder, epoch: int, val_loss: float) -> "_Selection":
        return cls(epoch, val_loss, {k: v.detach().clone() for k, v in encoder.state_dict().items()},
                   encoder.compute_dtype)

    @classmethod
    def restore(cls, r: RSCResult, compute_dtype: torch.dtype | None) -> "_Selection":
        return cls(r.best_epoch, r.best_val_loss, r.encoder_state, compute_dtype,
                   (torch.from_numpy(r.test_embeddings), torch.from_numpy(r.test_probabilities)))

    def test_outputs(self, data: ModalityData, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F_k(X_test) and softmax(F_k(X_test) W) at the selected epoch, the bits the encoder gave then."""
        if self.outputs is None:
            f = encode(encoder_from_state(self.encoder_state, data.test_x.device, self.compute_dtype), data.test_x)
            self.outputs = f, torch.softmax(f @ prior, dim=1)
        return self.outputs

    def result(self, data: ModalityData, prior: torch.Tensor) -> RSCResult:
        embeddings, probabilities = self.test_outputs(data, prior)
        return RSCResult(modality=data.name, test_embeddings=embeddings.cpu().numpy(),
                         test_probabilities=probabilities.cpu().numpy(), test_labels=data.test_labels,
                         best_epoch=self.epoch, best_val_loss=self.val_loss,
                         encoder_state={k: v.cpu() for k, v in self.encoder_state.items()})


def _epoch_line(name: str, epochs: int, r: dict[str, float], best: _Selection | None) -> str:
    line = (f"RSC {name} epoch {r['epoch']}/{epochs}: J={r['J']:.5f} J_L={r['J_L']:.5f} "
            f"J_D={r['J_D']:.5f} J_MSE={r['J_MSE']:.6f}")
    if "val" in r:
        line += f" val={r['val']:.5f} (best {best.val_loss:.5f} @ {best.epoch})"
    return line
