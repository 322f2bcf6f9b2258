"""`--lr auto`: each modality's RSC learning rate chosen from its training and validation data.

Successive halving over a log grid. Every candidate rate trains the modality's RSC
unit (its own seed, as the real run) for the first eighth of the epochs; the better
half by the criterion continue to a quarter, the better two to a half, and the best
one continues to the end, which is then exactly the plain run at that rate (training
resumes bit for bit). The whole unit costs about 2.4 times its plain RSC run.

The criterion looks at the validation split only, never the test split:
- "val_loss": the lowest validation loss J so far (what model selection uses);
- "val_map": MAP@all of the validation rows, as queries, against the training rows of
  the same modality, both embedded by the selected encoder so far (cosine, labels).
docs/lr_search.md says how they compare and why the default is what it is.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from drcl_fast.config import AUTO
from drcl_fast.errors import NonFiniteLossError
from drcl_fast.modality import ModalityData, encode
from drcl_fast.model import encoder_from_state
from drcl_fast.retrieval import evaluate_map
from drcl_fast.rsc import RSCResult, RSCSettings, train_rsc

log = logging.getLogger("drcl_fast")

GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
CRITERIA = ("val_loss", "val_map")
DEFAULT_CRITERION = "val_loss"
ROUND_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)   # of the epochs, at the end of each round
KEEP = (4, 2, 1)                          # candidates that go on after each round


def round_ends(epochs: int, sample_interval: int = 1) -> list[int]:
    """The epoch at which each round ends: increasing, at most `epochs`, each a validated epoch
    (a multiple of `sample_interval`) where there is one, so that every round has a score."""
    ends: list[int] = []
    for fraction in ROUND_FRACTIONS:
        end = min(epochs, sample_interval * max(1, math.ceil(epochs * fraction / sample_interval)))
        if not ends or end > ends[-1]:
            ends.append(end)
    return ends


@dataclass
class Candidate:
    """One rate's progress in the search: its scores after each round it ran, and its state."""

    lr: float
    scores: list[float] = field(default_factory=list)   # the criterion after each round (higher: better)
    diverged: bool = False
    snapshot: dict[str, Any] | None = None              # train_rsc's resume state at the last round's end

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Candidate":
        return cls(**state)


@dataclass
class SearchRecord:
    """What the search found: written to lr_search.json and logged as a table."""

    modality: str
    criterion: str
    chosen: float
    rounds: list[int]                          # the epoch each round ended at
    candidates: list[dict[str, Any]]           # lr, scores per round, diverged
    seconds: float                             # the search's rounds, before the winner's last stretch
    epochs_trained: int                        # over all candidates, the winner's up to the last round

    def table(self) -> list[str]:
        head = f"{self.modality}: lr {self.chosen:g} by {self.criterion} ({self.seconds:.1f} s of search)"
        rows = []
        for c in self.candidates:
            scores = " ".join(f"{s:9.5f}" for s in c["scores"]) + (" diverged" if c["diverged"] else "")
            rows.append(f"  {c['lr']:8.0e} {scores}{'  <- chosen' if c['lr'] == self.chosen else ''}")
        return [head, f"  {'lr':>8} criterion after epochs {', '.join(map(str, self.rounds))}", *rows]


def score(result: RSCResult, data: ModalityData, criterion: str) -> float:
    """The criterion of a candidate's selected model so far; higher is better."""
    if criterion == "val_loss":
        return -result.best_val_loss
    encoder = encoder_from_state(result.encoder_state, data.train_x.device)
    return evaluate_map(encode(encoder, data.valid_x), data.valid_t, encode(encoder, data.train_x), data.train_t)


def search(data: ModalityData, prior: torch.Tensor, s: RSCSettings, criterion: str = DEFAULT_CRITERION,
           state: dict[str, Any] | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
           progress: bool = False) -> tuple[SearchRecord, dict[str, Any]]:
    """Successive halving over GRID for one modality's RSC run of `s.epochs` epochs.

    Args:
        data: the modality's tensors (its test rows are not looked at).
        prior: the frozen prior W.
        s: the unit's settings; `s.lr` is ignored.
        criterion: one of CRITERIA.
        state: what `on_round` last received, to continue an interrupted search.
        on_round: called with the search's state after each round (for checkpoints).
        progress: show each candidate's epoch bar.

    Returns:
        The record, and the winner's resume state at the last round's end: `train_rsc`
        with it and `s.epochs` ends exactly as a plain run at the chosen rate.
    """
    ends = round_ends(s.epochs, s.sample_interval)
    # The candidates' runs see one test row (train_rsc embeds the test split of each selected
    # epoch): nothing of the test split reaches the choice, and no time goes into embedding it.
    data = dataclasses.replace(data, test_x=data.test_x[:1], test_labels=data.test_labels[:1])
    if state is None:
        state = {"round": 0, "seconds": 0.0, "alive": list(GRID),
                 "candidates": [Candidate(lr).to_state() for lr in GRID]}
    candidates = [Candidate.from_state(c) for c in state["candidates"]]
    alive = [c for c in candidates if c.lr in state["alive"]]
    seconds = state["seconds"]
    for r in range(state["round"], len(ends)):
        started = time.perf_counter()
        for c in alive:
            _advance(c, data, prior, dataclasses.replace(s, lr=c.lr, epochs=ends[r]), criterion, progress)
        keep = 1 if r == len(ends) - 1 else KEEP[r]
        # The best first; among equals the smaller rate, the safer one.
        alive = sorted((c for c in alive if not c.diverged), key=lambda c: (-c.scores[-1], c.lr))[:keep]
        for c in candidates:
            if c not in alive:
                c.snapshot = None   # out of the search: its state is not needed any more
        seconds += time.perf_counter() - started
        state = {"round": r + 1, "seconds": seconds, "alive": [c.lr for c in alive],
                 "candidates": [c.to_state() for c in candidates]}
        if on_round is not None:
            on_round(state)
    if not alive:
        raise NonFiniteLossError(f"RSC on modality {data.name!r}: every learning rate of the search "
                                 f"({', '.join(f'{lr:g}' for lr in GRID)}) diverged; give --lr by hand")
    winner = alive[0]
    # A candidate that diverged in a round is counted as if it trained it whole.
    trained = sum(ends[min(len(c.scores) + c.diverged, len(ends)) - 1] for c in candidates)
    record = SearchRecord(data.name, criterion, winner.lr, ends,
                          [{"lr": c.lr, "scores": c.scores, "diverged": c.diverged} for c in candidates],
                          seconds, trained)
    return record, winner.snapshot


def _advance(c: Candidate, data: ModalityData, prior: torch.Tensor, s: RSCSettings, criterion: str,
             progress: bool) -> None:
    """Train candidate `c` to epoch s.epochs (from its snapshot), then score it; a divergence ends it."""
    captured: dict[str, Any] = {}

    def keep_last(epoch: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        if epoch == s.epochs:
            captured.update(snapshot())

    try:
        result = train_rsc(data, prior, s, progress=progress, resume=c.snapshot, on_epoch=keep_last)
    except NonFiniteLossError:
        c.diverged, c.snapshot = True, None
        return
    value = score(result, data, criterion)
    if not math.isfinite(value):
        c.diverged, c.snapshot = True, None
        return
    c.scores.append(value)
    c.snapshot = captured

