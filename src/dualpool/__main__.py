import sys

from dualpool.cli.main import main

sys.exit(main())
