import sys

from e5studio.cli import main

sys.exit(main())
