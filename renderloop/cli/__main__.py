"""``python -m renderloop.cli``: the ``renderloop`` command (torchrun re-runs it in each rank)."""

import sys

from renderloop.cli import main

sys.exit(main())
