"""Where a warm click's time goes: pyinstrument over ``Analyzer.analyze_file``.

    pip install -r benchmarks/requirements.txt
    python benchmarks/profile_click.py IMAGE --point R A S [--bundle DIR] [--repeats 10]

The model is loaded and one click answered before profiling starts (a worker does both at
start), then ``--repeats`` clicks are profiled together; the text report goes to stdout and an
HTML one beside ``--html`` if given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pyinstrument import Profiler

from medcnn.app.analysis import Analyzer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--point", nargs=3, type=float, required=True, metavar=("R", "A", "S"))
    parser.add_argument("--bundle", type=Path, help="a trusted bundle (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--html", type=Path)
    args = parser.parse_args()
    analyzer = Analyzer(args.bundle, trusted=args.bundle is not None)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer.analyze_file(args.image, args.point, Path(tmp) / "warm-up")
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for n in range(args.repeats):
            analyzer.analyze_file(args.image, args.point, Path(tmp) / str(n))
        profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))
    if args.html:
        args.html.write_text(profiler.output_html())


if __name__ == "__main__":
    main()
