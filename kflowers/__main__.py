import sys

from kflowers.cli.main import main

sys.exit(main())
