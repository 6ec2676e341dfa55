"""`python -m medcnn` runs the command line (as `torchrun -m medcnn` does on each rank)."""

import sys

from medcnn.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
