"""The ``medcnn`` command: analyze, batch, demo, models, train, evaluate.

Every failure a user can cause ends here as one sentence on stderr and a documented exit code
(``medcnn exit-codes`` lists them); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from medcnn import __version__
from medcnn.errors import (
    EXIT_CODES,
    CancelledError,
    MedCNNError,
    OutputError,
    UsageError,
    disk_error,
)

if TYPE_CHECKING:
    from medcnn.app.engine import Engine

EPILOG = "Research software, not for clinical use. Exit codes: run `medcnn exit-codes`."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: exit code 2, one sentence
        self.print_usage(sys.stderr)
        raise UsageError(f"{message}; run `{self.prog} --help` for the options.")


def _add_bundle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="a MONAI bundle folder to use instead of the shipped one of the same model",
    )
    parser.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow a bundle other than the shipped one: bundles can run code, "
        "so only for bundles you trust",
    )


def _add_dicom_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dicom",
        action="store_true",
        help="also write the results as DICOM (segmentation.dcm, heatmap.dcm, report.dcm: SEG, "
        "Parametric Map, SR; a radiograph's map and SR) in the source's study; DICOM input only",
    )
    parser.add_argument(
        "--store",
        metavar="AET@HOST:PORT",
        default=None,
        help="send the DICOM results (implies --dicom) by C-STORE to this archive",
    )
    parser.add_argument(
        "--stow",
        metavar="URL",
        default=None,
        help="send the DICOM results (implies --dicom) by DICOMweb STOW-RS to URL/studies",
    )


def _add_model_option(parser: argparse.ArgumentParser, what: str) -> None:
    from medcnn.catalog import NODULE_MODEL, installed_models  # the bundles, no torch

    parser.add_argument(
        "--model",
        default=NODULE_MODEL,
        choices=tuple(installed_models()),
        help=f"{what} (default {NODULE_MODEL}; medcnn models lists them)",
    )


SOURCES = ("lidc", "nodulemnist3d")


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="lidc",
        help="lidc (default): the lidc_voi volumes of interest; nodulemnist3d: the "
        "nodulemnist3d.npz of MedMNIST v2 (download it yourself from medmnist.com), to compare "
        "with the MedMNIST table",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="with --source nodulemnist3d, accept an npz that is not the official file (a "
        "subset you made); its numbers are then not comparable with the MedMNIST table",
    )


def build_parser() -> argparse.ArgumentParser:
    from medcnn.nodule.commands import LIDC_DATA  # light: no torch

    parser = _Parser(
        prog="medcnn",
        description=(
            "MedCNN: trained CNNs for medical images (medcnn models lists them): a lung nodule "
            "at a point in a chest CT (probability of malignancy, segmentation, diameter, "
            "volume) and pneumonia on a chest radiograph, each with its uncertainty and a "
            "heatmap of what the network looked at."
        ),
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"medcnn {__version__}")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="log progress and show tracebacks of errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    analyze = commands.add_parser(
        "analyze",
        help="analyse a nodule in a CT, or a chest radiograph",
        description="With --point, analyse the nodule at that point of a CT (lung nodule "
        "model): writes result.json, heatmap.nii.gz and segmentation.nii.gz. Without, analyse "
        "a whole chest radiograph (chest X-ray model): writes result.json, heatmap.nii.gz on "
        "the radiograph's pixels and, for PNG or JPEG, heatmap.png of its size. All files or "
        "none; result.json says which model answered and why.",
        epilog=EPILOG,
    )
    analyze.add_argument(
        "image",
        type=Path,
        help="a CT (DICOM folder or file, NIfTI, NRRD, MHA) or a radiograph (DICOM, PNG, JPEG, "
        "single-slice NIfTI, NRRD, MHA)",
    )
    analyze.add_argument(
        "--point",
        nargs=3,
        type=float,
        default=None,
        metavar=("R", "A", "S"),
        help="for a CT: the nodule's position in world millimetres, RAS as 3D Slicer "
        "shows it (LPS with --lps); a radiograph takes none",
    )
    analyze.add_argument(
        "--model",
        default=None,
        help="the model to use (medcnn models lists them); by default the input decides",
    )
    analyze.add_argument(
        "--lps", action="store_true", help="the point is in LPS (DICOM/ITK) instead of RAS"
    )
    analyze.add_argument("--out", type=Path, required=True, help="output folder")
    analyze.add_argument(
        "--series-uid",
        default=None,
        help="the SeriesInstanceUID to use when a folder holds several series",
    )
    analyze.add_argument(
        "--overlay",
        action="store_true",
        help="also write overlay.png: the heatmap (and a nodule's outline) over the image",
    )
    _add_dicom_option(analyze)
    _add_bundle_options(analyze)

    batch = commands.add_parser(
        "batch",
        help="analyse every row of a manifest CSV",
        description="MANIFEST has the column image (optional id, and r,a,s for a nodule's "
        "point in a CT; a radiograph's row leaves them empty); image paths are relative to the "
        "manifest. Writes DIR/predictions.csv in the manifest's order and each "
        "case's files under DIR/cases/. A failed case is reported in its error column and the "
        "exit code is 11.",
        epilog=EPILOG,
    )
    batch.add_argument("manifest", type=Path, help="the manifest CSV")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    batch.add_argument("--lps", action="store_true", help="the manifest's points are LPS")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help="images run through the network together (default 16; 1 for the least memory)",
    )
    _add_dicom_option(batch)
    _add_bundle_options(batch)

    demo = commands.add_parser(
        "demo",
        help="analyse the synthetic examples (the embedded default inputs)",
        description="Generate MedCNN's synthetic examples (not patients): a CT phantom as a "
        "DICOM series and NIfTI, and a synthetic chest radiograph; analyse each with its "
        "model and say where the outputs are.",
        epilog=EPILOG,
    )
    demo.add_argument("--out", type=Path, default=Path("medcnn_demo"), help="output folder")

    train = commands.add_parser(
        "train",
        help="train the five fold models and assemble a release bundle",
        description="Train one model per patient fold of lidc_voi (resumable: rerun the same "
        "command after an interruption), then assemble the ensemble, its combining head, "
        "metrics and plots into --release-dir. With --source nodulemnist3d, train one model on "
        "NoduleMNIST3D's training split instead, report its validation split, and write a "
        "one-member benchmark bundle (it does not segment) to evaluate on the test split.",
        epilog=EPILOG,
    )
    _add_model_option(train, "the model to train")
    train.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the lidc_voi folder (with nodules.csv; default train.json's data_dir), the "
        "nodulemnist3d.npz file with --source nodulemnist3d, or for the chest X-ray model the "
        "xray folder (kermany/ and nih/)",
    )
    train.add_argument(
        "--experiments",
        nargs="+",
        default=None,
        help="chest X-ray model only: comparisons to train besides the release's members "
        "(founding, children, adults; see the model card)",
    )
    _add_source_options(train)
    train.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="checkpoints, logs and out-of-fold predictions (default train.json's run_dir, or "
        "runs/nodulemnist3d with --source nodulemnist3d)",
    )
    train.add_argument(
        "--release-dir",
        type=Path,
        default=None,
        help="where to write the new bundle (default RUN_DIR/bundle)",
    )
    train.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=None,
        help="lidc only: which folds, two or more (the release's head is fitted on each fold's "
        "out-of-fold predictions from the others; default train.json's folds)",
    )
    train.add_argument(
        "--epochs", type=int, default=None, help="default train.json's settings.epochs"
    )
    train.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="lidc only: one training of every fold per seed; all are ensembled (default "
        "train.json's seeds)",
    )
    train.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N nodules (of each split with nodulemnist3d; a smoke run; "
        "default train.json's limit)",
    )
    train.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="at most this many steps per epoch (a smoke run; default train.json's "
        "settings.max_steps_per_epoch)",
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="cross-validated metrics, ROC curve and reliability diagram",
        description="Judge each nodule of lidc_voi with the ensemble member that never saw its "
        "patient; writes metrics.json, predictions.csv, roc.png and reliability.png. With "
        "--source nodulemnist3d, judge NoduleMNIST3D's test split with the whole model and "
        "write its AUC and accuracy (the MedMNIST table's metrics) to metrics.json and "
        "predictions.csv.",
        epilog=EPILOG,
    )
    _add_model_option(evaluate, "the model to evaluate")
    evaluate.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"the lidc_voi folder (default {LIDC_DATA}), the nodulemnist3d.npz file with "
        "--source nodulemnist3d, or for the chest X-ray model a folder with labels.csv (image, "
        "label, optional patient_id; laid out like xray/nih)",
    )
    _add_source_options(evaluate)
    evaluate.add_argument("--out", type=Path, default=Path("medcnn_evaluation"))
    evaluate.add_argument(
        "--every", type=int, default=None, help="only every N-th nodule (a quick, fixed subset)"
    )
    evaluate.add_argument(
        "--held-out",
        action="store_true",
        help="judge every nodule with the whole model, as a click does: for a folder of "
        "nodules of other patients than lidc_voi's (laid out like it; nodules.csv needs image, "
        "center_r, center_a, center_s and malignancy, and may give mask, diameter_mm, fold)",
    )
    _add_bundle_options(evaluate)

    models = commands.add_parser(
        "models",
        help="list the installed models",
        description="List the installed models: name, task, input, version and headline "
        "metrics; --path prints each model's bundle folder (for python -m monai.bundle run).",
        epilog=EPILOG,
    )
    models.add_argument(
        "--path", action="store_true", help="print each model's name and bundle folder only"
    )
    export = commands.add_parser(
        "export",
        help="derive each model's TorchScript export (model.ts) from its weights",
        description="Write each installed model's TorchScript export, MONAI's ckpt_export of "
        "the bundle's network_def with the shipped, verified weights (models/model.pt). "
        "Nothing MedCNN runs needs it, so the bundles ship model.pt alone.",
        epilog=EPILOG,
    )
    export.add_argument(
        "--model", default=None, help="only this model (medcnn models lists them); default all"
    )
    export.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write DIR/<model>.ts; by default each bundle's own models/model.ts",
    )
    web = commands.add_parser(
        "web",
        help="the one-click analysis in a web browser, on 3D Slicer's scene",
        description="Serve MedCNN's viewer (3D Slicer's scene and views through trame-slicer): "
        "open IMAGE (the synthetic phantom, not a patient, by default), click on a nodule, "
        "press Analyze. Listens on 127.0.0.1 only, unless --host says otherwise; there is no "
        'authentication. Needs the web extra: pip install -e ".[web]".',
        epilog=EPILOG,
    )
    web.add_argument(
        "image", nargs="?", type=Path, help="a CT (DICOM folder, NIfTI, NRRD, MHA) or radiograph"
    )
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; any other has no "
        "authentication)",
    )
    web.add_argument(
        "--point",
        nargs=3,
        type=float,
        metavar=("R", "A", "S"),
        help="place a point here (world mm, RAS) and centre the views on it",
    )
    web.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    commands.add_parser("exit-codes", help="list the exit codes and what they mean")
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    from medcnn.app.engine import Engine

    return Engine(args.bundle, trusted=args.trust_bundle)


def run_analyze(args: argparse.Namespace) -> int:
    from medcnn.outputs.dicom_source import check_dicom_input
    from medcnn.outputs.sending import check_destinations
    from medcnn.outputs.writing import check_result_folder

    dicom = _asks_dicom(args)
    check_destinations(args.store, args.stow)
    if dicom:
        check_dicom_input(args.image)
    check_result_folder(args.out)
    engine = _engine(args)  # loads a model only once the input has chosen it

    def report(stage: str, fraction: float) -> None:
        logging.getLogger("medcnn").info("%3d%% %s", int(fraction * 100), stage)

    result = engine.analyze_file(
        args.image,
        args.point,
        args.out,
        lps=args.lps,
        progress=report,
        series_uid=args.series_uid,
        overlay=args.overlay,
        model=args.model,
        dicom=dicom,
    )
    print(result.answer_line())
    print(f"model: {result.model.id} ({result.model.chosen_because})")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"outputs in {args.out}")
    if args.store is not None or args.stow is not None:
        from medcnn.outputs.sending import send_results

        for line in send_results(result, Path(args.out), args.store, args.stow):
            print(line)
    return 0


def _asks_dicom(args: argparse.Namespace) -> bool:
    """--dicom, or a destination to send the DICOM results to (which implies it)."""
    return bool(args.dicom or args.store is not None or args.stow is not None)


def run_batch(args: argparse.Namespace) -> int:
    from medcnn.app.batch import GROUP_SIZE, BatchRunner
    from medcnn.outputs.sending import check_destinations

    check_destinations(args.store, args.stow)
    group_size = GROUP_SIZE if args.group_size is None else args.group_size
    runner = BatchRunner(
        _engine(args),
        args.manifest,
        args.out,
        progress=not args.no_progress,
        lps=args.lps,
        group_size=group_size,
        dicom=_asks_dicom(args),
        store_to=args.store,
        stow_to=args.stow,
    )
    predictions = runner.run()
    print(f"predictions in {predictions}")
    return 0


def _commands(model: str):  # noqa: ANN202 - each model's own class, named by its bundle
    """The class that runs ``model``'s demo, training and evaluation (``inference.json``'s
    ``commands``)."""
    from medcnn.bundle import configured_class, default_bundle_dir

    bundle = default_bundle_dir(model)
    return configured_class(bundle, "commands")(bundle)


def run_demo(args: argparse.Namespace) -> int:
    from medcnn.app.engine import Engine
    from medcnn.catalog import installed_models

    engine = Engine()
    print("MedCNN demo on SYNTHETIC images (not patients; research use only)")
    for model in installed_models():
        for line in _commands(model).demo(engine, Path(args.out).resolve()):
            print(line)
    return 0


def run_train(args: argparse.Namespace) -> int:
    return int(_commands(args.model).train(args))


def run_evaluate(args: argparse.Namespace) -> int:
    return int(_commands(args.model).evaluate(args))


def run_models(args: argparse.Namespace) -> int:
    from medcnn.app.models import describe_models

    for line in describe_models(paths_only=args.path):
        print(line)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from medcnn.catalog import default_bundle_dir, installed_models
    from medcnn.outputs.writing import output_folder
    from medcnn.training.release import export_torchscript

    installed = list(installed_models())
    if args.model is not None and args.model not in installed:
        raise UsageError(
            f"There is no installed model {args.model!r}; the installed ones are "
            f"{', '.join(installed)} (medcnn models)."
        )
    folder = output_folder(args.out) if args.out else None
    for model in [args.model] if args.model else installed:
        bundle = default_bundle_dir(model)
        target = folder / f"{model}.ts" if folder else bundle / "models" / "model.ts"
        if not os.access(target.parent, os.W_OK):
            raise OutputError(
                f"The folder {target.parent} cannot be written to; give a folder you can write "
                "to with --out."
            )
        export_torchscript(bundle, target)
        print(f"{model}\t{target}")
    return 0


def run_web(args: argparse.Namespace) -> int:
    from medcnn.web.setup import require_web_packages

    require_web_packages()
    from medcnn.web.viewer import serve

    point = tuple(args.point) if args.point else None
    return serve(args.image, host=args.host, port=args.port, point=point)


def run_exit_codes(args: argparse.Namespace) -> int:
    for code, meaning in sorted(EXIT_CODES.items()):
        print(f"{code:>4}  {meaning}")
    return 0


COMMANDS = {
    "analyze": run_analyze,
    "batch": run_batch,
    "demo": run_demo,
    "train": run_train,
    "evaluate": run_evaluate,
    "models": run_models,
    "export": run_export,
    "web": run_web,
    "exit-codes": run_exit_codes,
}


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose" in (argv or sys.argv[1:]) or "-v" in (argv or sys.argv[1:])
    if not verbose:  # the libraries' own warnings and repairs: our sentence is enough
        from medcnn.app.quiet import quiet_libraries

        quiet_libraries()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        with terminated_as_cancel():
            args = build_parser().parse_args(argv)
            if not args.command:
                build_parser().print_help()
                return 2
            return COMMANDS[args.command](args)
    except MedCNNError as error:
        if verbose:
            traceback.print_exc()
        print(f"medcnn: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"medcnn: error: {CancelledError('Cancelled by the user.')}", file=sys.stderr)
        return CancelledError.exit_code
    except OSError as error:
        if verbose:
            traceback.print_exc()
        output = disk_error(error)
        if output is None:
            return unexpected(error)
        print(f"medcnn: error: {output}", file=sys.stderr)
        return output.exit_code
    except Exception as error:
        if verbose:
            traceback.print_exc()
        return unexpected(error)


def unexpected(error: BaseException) -> int:
    print(
        f"medcnn: error: unexpected {type(error).__name__}: {error}. Rerun with --verbose "
        "and report it.",
        file=sys.stderr,
    )
    return 1


@contextmanager
def terminated_as_cancel() -> Iterator[None]:
    """SIGTERM (a process manager stopping MedCNN) cancels like Ctrl-C: the work stops, its
    staging folder is removed and the exit code is 130. SIGKILL cannot be caught; what it
    leaves, the next run into the same folder removes (``outputs.writing``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
