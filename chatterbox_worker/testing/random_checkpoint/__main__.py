"""``python -m chatterbox_worker.testing.random_checkpoint``: the builder's command line."""
import sys

from chatterbox_worker.testing.random_checkpoint.cli import main

sys.exit(main())
