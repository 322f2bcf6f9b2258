"""Triton kernels for the hot paths (imported as ``drcl_fast.kernels``).

Each op lives in its own file holding its kernels, the plain forward/backward
functions and the autograd Function; its reference twin is in
``drcl_fast.ops.reference`` / ``drcl_fast.retrieval.reference``, and dispatch
(``drcl_fast.ops``, ``drcl_fast.retrieval``) registers it as the "triton" backend.

Training (docs/kernels.md): ``matmul.py`` (the GEMM with bias/ReLU/row-norm
epilogues and a ReLU-mask prologue), ``linear_relu.py`` and ``mixup_project.py``
(the encoder), ``gce.py`` and ``drcl_loss.py`` (the RSC loss), ``precision.py``
(TF32 / float32 / bf16 matrix math). Every launcher checks its tensors through ``boundary.py``
and picks int32 or int64 offsets through ``offsets.py``. ``fused_loss.py`` holds no Triton: the
C-space algebra and the autograd Function the Triton loss shares with the CPU's
restructured path. Retrieval: ``map_*.py``.
"""
