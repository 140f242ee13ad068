import sys

from kflowers.cli import main

sys.exit(main())
