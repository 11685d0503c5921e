"""``python -m smallfirst.service``: the same as the ``smallfirst`` command."""

import sys

from smallfirst.service.cli import main

sys.exit(main())
