import sys

from rpmimg.cli import entry

sys.exit(entry())
