"""`python -m medcnn` runs the command line (as `torchrun -m medcnn` does on each rank)."""

from medcnn.app.cli import main

if __name__ == "__main__":
    main()
