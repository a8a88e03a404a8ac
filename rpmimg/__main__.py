import sys

from rpmimg.cli import main

sys.exit(main())
