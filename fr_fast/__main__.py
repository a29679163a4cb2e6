import sys

from fr_fast.cli import main

sys.exit(main())
