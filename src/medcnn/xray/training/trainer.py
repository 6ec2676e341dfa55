"""``medcnn train --model chest_xray_pneumonia`` and the bundle's ``train.json``: train the
members (``experiments``), then assemble and measure the release
(``release``)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medcnn import distributed
from medcnn.bundle import load_radiograph_spec
from medcnn.errors import InputNotFoundError, UsageError
from medcnn.xray.training.data import build_cache
from medcnn.xray.training.experiments import (
    EXPERIMENTS,
    load_recipe,
    member_dir,
    network_args,
)
from medcnn.xray.training.release import build_release
from medcnn.xray.training.training import train_member


class RadiographTraining:
    """``medcnn train --model chest_xray_pneumonia`` and the bundle's ``train.json``: train the
    chosen experiments' members (resumably), then assemble the release from ``both`` into
    ``release_dir`` (a copy of the bundle's configs, docs and licence, with the new weights and
    numbers; copy it over ``monai_bundle/chest_xray_pneumonia`` to ship it)."""

    def __init__(
        self,
        data_root: Path | str,
        run_dir: Path | str,
        bundle_dir: Path | str,
        release_dir: Path | str | None = None,
        experiments: Sequence[str] = ("both",),
        overrides: dict | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        unknown = [name for name in experiments if name not in EXPERIMENTS]
        if unknown:
            raise UsageError(
                f"Unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}."
            )
        self.data_root, self.run_dir = Path(data_root), Path(run_dir)
        self.bundle_dir = Path(bundle_dir)
        self.release_dir = Path(release_dir) if release_dir else self.run_dir / "bundle"
        self.experiments = list(dict.fromkeys(["both", *experiments]))
        self.recipe = load_recipe(self.bundle_dir, overrides or {})
        self.log = log

    def run(self) -> dict:
        """Train, then release; under ``torchrun`` the ranks share each member's steps and
        rank 0 alone builds the cache and the release (the others return an empty dict)."""
        if not (self.data_root / "kermany").is_dir() or not (self.data_root / "nih").is_dir():
            raise InputNotFoundError(
                f"{self.data_root} does not hold kermany/ and nih/; give the xray data folder "
                "with --data."
            )
        here = distributed.init_process_group("gloo")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        spec = load_radiograph_spec(self.bundle_dir)
        cache_path = self.run_dir / f"cache-{spec.size}.npz"
        if here.is_main:
            build_cache(self.data_root, spec, cache_path)
        distributed.barrier()
        cache = build_cache(self.data_root, spec, cache_path)
        log_path = self.run_dir / "train.log"

        def log(line: str) -> None:
            stamped = f"{time.strftime('%H:%M:%S')} {line}"
            (self.log or print)(stamped)
            with open(log_path, "a") as handle:
                handle.write(stamped + "\n")

        for name in self.experiments:
            experiment = EXPERIMENTS[name]
            for fold in experiment.folds:
                train_member(
                    cache,
                    member_dir(self.run_dir, name, fold),
                    self.recipe,
                    fold=fold,
                    sources=experiment.sources,
                    architecture=experiment.architecture,
                    log=log,
                    **network_args(self.bundle_dir),
                )
        if not here.is_main:
            return {}
        if self.release_dir.resolve() != self.bundle_dir.resolve():
            copy_bundle(self.bundle_dir, self.release_dir)
        return build_release(self.run_dir, self.data_root, self.release_dir)


def copy_bundle(bundle_dir: Path, release_dir: Path) -> None:
    """The bundle's configs, docs and licence, without its weights, as a release's start."""
    for part in ("configs", "docs", "LICENSE"):
        source = bundle_dir / part
        if source.is_dir():
            shutil.copytree(source, release_dir / part, dirs_exist_ok=True)
        elif source.exists():
            release_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, release_dir / part)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the chest X-ray model and its release.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--release-dir", type=Path, default=None)
    parser.add_argument("experiments", nargs="*", default=list(EXPERIMENTS))
    args = parser.parse_args(argv)
    RadiographTraining(
        args.data, args.run_dir, args.bundle, args.release_dir, args.experiments
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
