"""`drcl-fast train` as a torchrun rank for the tests; DRCL_TEST_FAIL_NAME=m makes RSC on modality m fail
(with DRCL_TEST_FAIL_ONCE=1, in torchrun's first attempt only).

The failure stands for anything that stops one rank (a bad GPU, a full disk): the
job must end, naming the rank and the unit, instead of leaving the other ranks waiting.
"""
from __future__ import annotations

import os
import sys

from drcl_fast import cli
from drcl_fast.training import trainer

FAIL_NAME = os.environ.get("DRCL_TEST_FAIL_NAME")
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

if FAIL_NAME is not None and (FIRST_ATTEMPT or os.environ.get("DRCL_TEST_FAIL_ONCE") != "1"):
    real_train_rsc = trainer.train_rsc

    def failing_train_rsc(data, *args, **kwargs):
        if data.name == FAIL_NAME:
            raise RuntimeError(f"injected failure in RSC of {data.name}")
        return real_train_rsc(data, *args, **kwargs)

    trainer.train_rsc = failing_train_rsc

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
