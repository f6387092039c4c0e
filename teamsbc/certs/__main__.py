"""`python -m teamsbc.certs cert renew -c FILE`: the cert commands without teamsbc.cli."""
import sys

from .cli import main

sys.exit(main())
