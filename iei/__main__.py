import sys

from iei.cli import main

sys.exit(main())
