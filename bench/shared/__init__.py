"""What the CPU runs (bench/cpu/) and the GPU suite (bench/gpu/) both use: the RSC loss case
(loss_case.py), how much two computations' average precisions differ (ap_changes.py), and
synthetic data of the Wikipedia benchmark's shape (wiki_shaped.py).

Imported as `bench.shared.<module>`, from the repository root on sys.path: the GPU suite runs
with PYTHONPATH=. (bench/README.md), and a CPU script first imports bench/cpu/repo_root.py.
"""
