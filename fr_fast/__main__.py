import sys

from fr_fast.cli.main import main

sys.exit(main())
