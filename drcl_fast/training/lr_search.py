"""`--lr auto`: each modality's RSC learning rate chosen from its training and validation data.

Successive halving over a log grid. Every candidate rate trains the modality's RSC
unit (its own seed, as the real run) for the first eighth of the epochs; the better
half by the criterion continue to a quarter, the better two to a half, and the best
one continues to the end, which is then exactly the plain run at that rate (training
resumes bit for bit). The whole unit costs about 2.4 times its plain RSC run.

A leader at an end of the rates tried is a search that has not finished: after each
round, while the best candidate is the largest (smallest) rate tried, the next rate
half a decade beyond (3e-2, 1e-1 above; 3e-6, 1e-6, ... below) joins the search,
trained from the start to that round's end, and is ranked with the others. The range
stops at RANGE_LIMITS; a winner there is logged as a warning with what to do.

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

from drcl_fast.config import AUTO, DEFAULT_CRITERION
from drcl_fast.errors import NonFiniteLossError
from drcl_fast.model import encoder_from_state
from drcl_fast.retrieval import evaluate_map
from drcl_fast.training.modality import ModalityData, encode
from drcl_fast.training.rsc import RSCResult, RSCSettings, train_rsc

log = logging.getLogger("drcl_fast")

GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
RANGE_LIMITS = (1e-7, 1e-1)               # how far beyond GRID the search extends its range
ROUND_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)   # of the epochs, at the end of each round
KEEP = (4, 2, 1)                          # candidates that go on after each round


def rate_beyond(lr: float, up: bool) -> float:
    """The rate half a decade above (below) `lr` on the grid's 1, 3, 10 steps: 1e-2 -> 3e-2 -> 1e-1."""
    halves = round(2 * math.log10(lr)) + (1 if up else -1)
    return float(f"{10 ** (halves / 2):.0e}")


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
    joined: int = 0                                     # the round it joined in (0: GRID; later: beyond it)

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
    extended: list[float] = field(default_factory=list)   # rates tried beyond GRID, in the order they joined
    at_limit: bool = False                     # the winner is at RANGE_LIMITS and still the end of the range

    def range_note(self) -> str:
        """How the range was extended (empty when it was not)."""
        notes = []
        for up, side in ((True, "above"), (False, "below")):
            beyond = [lr for lr in self.extended if (lr > GRID[-1]) == up]
            if beyond:
                edge = GRID[-1] if up else GRID[0]
                notes.append(f"range extended {side} {edge:g} to {(max if up else min)(beyond):g}")
        return "; ".join(notes)

    def table(self) -> list[str]:
        note = self.range_note()
        head = (f"{self.modality}: lr {self.chosen:g} by {self.criterion} ({self.seconds:.1f} s of search"
                f"{'; ' + note if note else ''})")
        rows = []
        for c in self.candidates:
            scores = " ".join([" " * 9] * c.get("joined", 0) + [f"{s:9.5f}" for s in c["scores"]]) \
                + (" diverged" if c["diverged"] else "")
            marks = ("  <- chosen" if c["lr"] == self.chosen else "") + \
                ("  (beyond the grid)" if c["lr"] not in GRID else "")
            rows.append(f"  {c['lr']:8.0e} {scores}{marks}")
        return [head, f"  {'lr':>8} criterion after epochs {', '.join(map(str, self.rounds))}", *rows]

    def limit_warning(self) -> str | None:
        """What to do when the winner is still the end of the range at its hard limit."""
        if not self.at_limit:
            return None
        side, bound = ("largest", "above") if self.chosen >= RANGE_LIMITS[1] else ("smallest", "below")
        return (f"{self.modality}: the learning-rate search chose {self.chosen:g}, the {side} rate it tries "
                f"(its range ends at {self.chosen:g}), so a better rate may lie {bound} it. Check the "
                f"features' scale (standardise each column with its training statistics), or try rates "
                f"{bound} it by hand with --lr")


def rate_lines(sources: list[tuple[float | str, str]], modalities: list[str], views: list[int]) -> list[str]:
    """The RSC rate of each modality to train and where it comes from, as logged before RSC starts."""
    lines = ["RSC learning rates:"]
    for k in views:
        rate, source = sources[k]
        lines.append(f"  modality {k} ({modalities[k]}): {rate if rate == AUTO else f'{rate:g}'}  {source}")
    if any(source.startswith("default") and rate == AUTO for rate, source in sources):
        lines.append("  (the search costs about 2.5 times the RSC time; give --lr to skip it: one rate for "
                     "every modality, or one per modality; docs/lr_search.md)")
    elif any(source.startswith("default") for _, source in sources):
        lines.append("  (--lr auto searches each modality's rate on this data: docs/lr_search.md)")
    return lines


def score(result: RSCResult, data: ModalityData, criterion: str, s: RSCSettings) -> float:
    """The criterion of a candidate's selected model so far (encoded at the run's precision); higher is better."""
    if criterion == "val_loss":
        return -result.best_val_loss
    encoder = encoder_from_state(result.encoder_state, data.train_x.device, s.compute_dtype)
    return evaluate_map(encode(encoder, data.valid_x), data.valid_t, encode(encoder, data.train_x), data.train_t)


def search(data: ModalityData, prior: torch.Tensor, s: RSCSettings, criterion: str = DEFAULT_CRITERION,
           state: dict[str, Any] | None = None, on_round: Callable[[dict[str, Any]], None] | None = None,
           progress: bool = False) -> tuple[SearchRecord, dict[str, Any]]:
    """Successive halving over GRID for one modality's RSC run of `s.epochs` epochs.

    Args:
        data: the modality's tensors (its test rows are not looked at).
        prior: the frozen prior W.
        s: the unit's settings; `s.lr` is ignored.
        criterion: one of config.CRITERIA.
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
        alive = [c for c in alive if not c.diverged]
        while (new := _extension(alive, candidates, r)) is not None:   # the leader is an end of the range
            _advance(new, data, prior, dataclasses.replace(s, lr=new.lr, epochs=ends[r]), criterion, progress)
            candidates.append(new)
            if not new.diverged:
                alive.append(new)
        keep = 1 if r == len(ends) - 1 else KEEP[r]
        alive = _ranked(alive)[:keep]
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
                                 f"({', '.join(f'{lr:g}' for lr in sorted(c.lr for c in candidates))}) "
                                 f"diverged; give --lr by hand")
    winner = alive[0]
    # A candidate that diverged in a round is counted as if it trained it whole.
    trained = sum(ends[min(c.joined + len(c.scores) + c.diverged, len(ends)) - 1] for c in candidates)
    tried = [c.lr for c in candidates]
    at_limit = winner.lr in (min(tried), max(tried)) and \
        (winner.lr >= RANGE_LIMITS[1] if winner.lr == max(tried) else winner.lr <= RANGE_LIMITS[0])
    record = SearchRecord(data.name, criterion, winner.lr, ends,
                          [{"lr": c.lr, "scores": c.scores, "diverged": c.diverged, "joined": c.joined}
                           for c in sorted(candidates, key=lambda c: c.lr)],
                          seconds, trained, [c.lr for c in candidates if c.joined or c.lr not in GRID], at_limit)
    if record.at_limit:
        log.warning(record.limit_warning())
    return record, winner.snapshot


def _ranked(alive: list[Candidate]) -> list[Candidate]:
    """The best first; among equals the smaller rate, the safer one."""
    return sorted(alive, key=lambda c: (-c.scores[-1], c.lr))


def _extension(alive: list[Candidate], candidates: list[Candidate], r: int) -> Candidate | None:
    """The candidate beyond the range tried when the round's leader is its largest (smallest) rate and
    the range may still grow that way; None when the leader has a tried rate on both sides."""
    if not alive:
        return None
    leader, tried = _ranked(alive)[0].lr, [c.lr for c in candidates]
    if leader == max(tried) and leader < RANGE_LIMITS[1]:
        return Candidate(min(rate_beyond(leader, up=True), RANGE_LIMITS[1]), joined=r)
    if leader == min(tried) and leader > RANGE_LIMITS[0]:
        return Candidate(max(rate_beyond(leader, up=False), RANGE_LIMITS[0]), joined=r)
    return None


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
    value = score(result, data, criterion, s)
    if not math.isfinite(value):
        c.diverged, c.snapshot = True, None
        return
    c.scores.append(value)
    c.snapshot = captured

