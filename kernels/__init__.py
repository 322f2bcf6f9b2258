"""Triton kernels for the hot paths (imported as ``drcl_fast.kernels``).

Each op lives in its own file holding its kernels, the plain forward/backward
functions and the autograd Function; its reference twin is in
``drcl_fast.ops.reference`` / ``drcl_fast.retrieval.reference``. None is
registered yet, so every dispatch falls back to the reference.
"""
