"""`python -m teamsbc.doctor`: the same command as `teamsbc doctor`."""
import sys

from .cli import main

sys.exit(main())
