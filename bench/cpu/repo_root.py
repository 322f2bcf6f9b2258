"""Puts the repository root on sys.path, for a script run as `python bench/cpu/<script>.py`.

Python puts only a script's own folder on sys.path, so the scripts here import one another by bare
name; what they share with the GPU suite (bench.shared) and the tests' torchrun launcher
(tests.support) are imported from the root, which the GPU suite gets from PYTHONPATH=. instead.
A script imports this module before those. Appended, not prepended: a run with PYTHONPATH at
another version's tree (train_cpu.py) keeps importing that version's drcl_fast.
"""
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2]))
