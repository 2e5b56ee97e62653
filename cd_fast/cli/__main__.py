import sys

from cd_fast.cli import main

sys.exit(main())
