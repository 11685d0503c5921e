"""``python -m smallfirst.ingest DIR``."""

import sys

from smallfirst.ingest.cli import main

sys.exit(main())
