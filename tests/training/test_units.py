"""The units of a run: who trains which (the cost plan), and units trained at once in one process."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drcl_fast.training.trainer import fit
from drcl_fast.training.units import Unit, makespan, plan, plan_lines, run_concurrently, units_at_once


def units_of(costs: list[int]) -> list[Unit]:
    return [Unit("rsc", k, f"m{k}", c) for k, c in enumerate(costs)]


def best_makespan(units: list[Unit], workers: int) -> int:
    """The optimum, by trying every assignment (small cases only)."""
    best = None
    for owners in itertools.product(range(workers), repeat=len(units)):
        loads = [0] * workers
        for unit, w in zip(units, owners):
            loads[w] += unit.cost
        best = max(loads) if best is None else min(best, max(loads))
    return best


def test_five_units_on_four_ranks_put_the_two_smallest_together():
    assignment = plan(units_of([10, 40, 30, 20, 15]), 4)
    assert [[u.view for u in units] for units in assignment] == [[1], [2], [3], [0, 4]]
    assert makespan(assignment) == 40
    lines = plan_lines(assignment)
    assert lines[0] == "rank 0: RSC m1 (35% of the cost)" and lines[-1] == "predicted makespan: 35% of the one-worker time"


def test_more_ranks_than_units_leaves_the_last_ones_idle():
    assignment = plan(units_of([3, 1]), 4)
    assert [[u.view for u in units] for units in assignment] == [[0], [1], [], []]
    assert "nothing (waits for the others)" in plan_lines(assignment)[2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=7), st.integers(1, 4))
def test_every_unit_is_planned_once_and_the_makespan_is_within_the_lpt_bound(costs, workers):
    units = units_of(costs)
    assignment = plan(units, workers)
    assert sorted(u.view for part in assignment for u in part) == list(range(len(units)))
    assert all([u.view for u in part] == sorted(u.view for u in part) for part in assignment)
    assert assignment == plan(list(reversed(units)), workers)       # the plan depends on the units only
    # Graham's bound for longest-processing-time-first: at most (4/3 - 1/(3m)) of the optimum.
    assert 3 * workers * makespan(assignment) <= (4 * workers - 1) * best_makespan(units, workers)


def test_a_plan_needs_a_worker():
    with pytest.raises(ValueError, match="at least one worker"):
        plan(units_of([1]), 0)


def test_units_at_once_give_each_unit_its_own_result_and_restore_the_thread_setting():
    units = units_of([5, 4, 3, 2, 1])
    seen_threads = set()
    both_started = threading.Barrier(2, timeout=30)   # the two longest units run at the same time

    def train(unit: Unit) -> torch.Tensor:
        seen_threads.add(threading.current_thread().name)
        assert torch.get_num_threads() == 1
        if unit.cost >= 4:
            both_started.wait()
        g = torch.Generator().manual_seed(unit.view)
        a = torch.randn(64, 64, generator=g)
        return (a @ a.T).sum(0)

    before = torch.get_num_threads()
    together = run_concurrently(units, train, torch.device("cpu"), streams=2)
    assert torch.get_num_threads() == before
    assert len(seen_threads) == 2
    torch.set_num_threads(1)
    try:
        alone = {unit: train(unit) for unit in units if unit.cost < 4}
    finally:
        torch.set_num_threads(before)
    assert list(together) == units
    assert all(torch.equal(together[u], alone[u]) for u in alone)


def test_the_threads_are_shared_out_among_the_units_at_once(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert units_at_once("auto", 6, cpu) == (6, 2)
    assert units_at_once("auto", 2, cpu) == (2, 8)
    assert units_at_once("auto", 1, cpu) == (1, 16)
    assert units_at_once(3, 6, cpu) == (3, 5)
    assert units_at_once(1, 6, cpu) == (1, 16)
    assert units_at_once(8, 2, cpu) == (2, 8)
    assert units_at_once("auto", 6, gpu) == (1, 16)     # streams at once are not the default until measured
    assert units_at_once(2, 6, gpu) == (2, 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert units_at_once("auto", 6, cpu) == (1, 1)      # one thread (a torchrun rank): one after another


def test_a_failing_unit_raises_its_error_after_the_others_end():
    def train(unit: Unit) -> int:
        if unit.view == 1:
            raise ValueError("unit 1 broke")
        return unit.view

    with pytest.raises(ValueError, match="unit 1 broke"):
        run_concurrently(units_of([3, 2, 1]), train, torch.device("cpu"), streams=3)


def test_a_run_with_modalities_at_once_equals_the_run_one_after_another(mfeat, tiny_config, tmp_path):
    """Byte for byte, at the same intra-op threads per unit (CPU GEMM sums depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = fit(mfeat, tiny_config.replace(out=str(tmp_path / "alone")), progress=False)
    finally:
        torch.set_num_threads(before)
    together = fit(mfeat, tiny_config.replace(out=str(tmp_path / "together"), concurrent_units=3), progress=False)
    assert torch.get_num_threads() == before
    assert torch.equal(together.prior, alone.prior)
    for k in range(mfeat.num_modalities):
        np.testing.assert_array_equal(together.rsc[k].test_embeddings, alone.rsc[k].test_embeddings)
        assert together.rsc[k].history == alone.rsc[k].history
    assert together.metrics[0].directions == alone.metrics[0].directions
    for name in ("features/mfeat_3.mat", "PriorW/W_16X10mfeat.mat", "metrics.json"):
        assert (tmp_path / "together" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_units_run_one_after_another_only_where_the_interpreter_would_run_their_kernels(monkeypatch):
    from drcl_fast.runtime import backends
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.interprets_triton("triton", "cpu")
    assert not backends.interprets_triton("auto", "cpu")          # the CPU's auto choice is the restructured loss
    assert not backends.interprets_triton("triton", "cuda")
    monkeypatch.setitem(backends.AUTO_PREFERENCE, "cpu", ("cpp", "triton", "torch"))
    assert backends.interprets_triton("auto", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not backends.interprets_triton("triton", "cpu")
