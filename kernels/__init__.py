"""Triton kernels for the hot paths (imported as ``drcl_fast.kernels``).

Each op lives in its own file: its kernels, launchers, plain forward/backward
functions, autograd Function, ``torch.library`` custom op (``custom_op.py``) and
self-check probe (inputs from ``probe_inputs.py``), and ``entry``, what dispatch
(``drcl_fast.ops``, ``drcl_fast.retrieval``) registers as the "triton" backend.
Its reference twin is in ``drcl_fast.ops.reference`` / ``drcl_fast.retrieval.reference``.

Training (docs/kernels.md): ``matmul.py`` (the GEMM with bias/ReLU/row-norm
epilogues and a ReLU-mask prologue), ``linear_relu.py`` and ``mixup_project.py``
(the encoder), ``gce.py`` and ``drcl_loss.py`` (the RSC loss; the half it shares with
the CPU engine is ``drcl_fast.ops.restructured``), ``precision.py`` (TF32 / float32 /
bf16 matrix math). Every launcher checks its tensors through ``boundary.py`` and picks
int32 or int64 offsets through ``offsets.py``. Retrieval: ``map_*.py``.
"""
