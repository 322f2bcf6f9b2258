import sys

from drcl_fast.cli import main

sys.exit(main())
