"""``python -m tepo_agent`` runs the command line."""

import sys

from tepo_agent.cli import main

sys.exit(main())
