"""``python -m service``: the same as the ``smallfirst`` command."""

import sys

from service.cli import main

sys.exit(main())
