"""The ``medcnn`` command: analyze, batch, demo, models, train, evaluate.

Every failure a user can cause ends here as one sentence on stderr and a documented exit code
(``medcnn exit-codes`` lists them); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from medcnn import __version__
from medcnn.errors import EXIT_CODES, CancelledError, MedCNNError, UsageError

if TYPE_CHECKING:
    from medcnn.app.engine import Engine
    from medcnn.outputs.result import Result

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
        "Parametric Map, SR) in the source's study; a DICOM CT input only",
    )


def _add_model_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--model",
        default="lung_nodule_ct",
        choices=("lung_nodule_ct", "chest_xray_pneumonia"),
        help=f"{what} (default lung_nodule_ct)",
    )


SOURCES = ("lidc", "nodulemnist3d")
LIDC_DATA = Path("../shared/data/lidc_voi")


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


def _data_path(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    if args.source == "nodulemnist3d":
        raise UsageError(
            "--source nodulemnist3d needs --data PATH/TO/nodulemnist3d.npz (download it from "
            "https://medmnist.com)."
        )
    return LIDC_DATA


def build_parser() -> argparse.ArgumentParser:
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
    analyze.add_argument(
        "--store",
        metavar="AET@HOST:PORT",
        default=None,
        help="send the DICOM results (implies --dicom) by C-STORE to this archive",
    )
    analyze.add_argument(
        "--stow",
        metavar="URL",
        default=None,
        help="send the DICOM results (implies --dicom) by DICOMweb STOW-RS to URL/studies",
    )
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
    commands.add_parser("exit-codes", help="list the exit codes and what they mean")
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    from medcnn.app.engine import Engine

    return Engine(args.bundle, trusted=args.trust_bundle)


def answer_line(result: Result) -> str:
    """A result in one line: the answer, the members' range and a nodule's size."""
    low, high = result.probability_interval
    line = (
        f"{result.label}: probability of {result.finding} {result.probability:.3f} "
        f"(members {low:.3f}-{high:.3f})"
    )
    if result.findings is not None:
        nodule = result.nodule
        line += f", diameter {nodule.diameter_mm:.1f} mm, volume {nodule.volume_ml:.3f} mL"
    return line


def run_analyze(args: argparse.Namespace) -> int:
    from medcnn.outputs.dicom_source import check_dicom_input
    from medcnn.outputs.sending import store_destination
    from medcnn.outputs.writing import check_output_folder

    dicom = args.dicom or args.store is not None or args.stow is not None
    if args.store is not None:
        store_destination(args.store)
    if dicom:
        check_dicom_input(args.image)
    check_output_folder(args.out)
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
    print(answer_line(result))
    print(f"model: {result.model.id} ({result.model.chosen_because})")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"outputs in {args.out}")
    if args.store is not None or args.stow is not None:
        send_dicom(result, Path(args.out), args.store, args.stow)
    return 0


def send_dicom(result: Result, out: Path, store_to: str | None, stow_to: str | None) -> None:
    """Send the DICOM files an analysis wrote, as asked; each destination says it got them."""
    from medcnn.outputs.sending import store, stow

    outputs = result.outputs
    names = (outputs.dicom_segmentation, outputs.dicom_heatmap, outputs.dicom_report)
    files = [out / name for name in names if name is not None]
    if store_to is not None:
        store(files, store_to)
        print(f"sent {len(files)} DICOM objects to {store_to}")
    if stow_to is not None:
        stow(files, stow_to)
        print(f"sent {len(files)} DICOM objects to {stow_to}")


def run_batch(args: argparse.Namespace) -> int:
    from medcnn.app.batch import GROUP_SIZE, BatchRunner

    group_size = GROUP_SIZE if args.group_size is None else args.group_size
    runner = BatchRunner(
        _engine(args),
        args.manifest,
        args.out,
        progress=not args.no_progress,
        lps=args.lps,
        group_size=group_size,
        dicom=args.dicom,
    )
    predictions = runner.run()
    print(f"predictions in {predictions}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from medcnn.app.demo import ensure_phantom, ensure_radiograph_phantom
    from medcnn.app.engine import Engine
    from medcnn.bundle import NODULE_MODEL, XRAY_MODEL, installed_models

    engine = Engine()
    print("MedCNN demo on SYNTHETIC images (not patients; research use only)")
    if NODULE_MODEL in installed_models():
        phantom = ensure_phantom()
        out = Path(args.out).resolve() / "ct_nodule"
        result = engine.analyze_file(
            phantom["dicom_dir"], phantom["nodule_center_ras"], out, overlay=True
        )
        print(f"CT phantom, {NODULE_MODEL} model:")
        print(f"  input (DICOM series): {phantom['dicom_dir']}")
        print(f"  input (NIfTI):        {phantom['nifti']}")
        print(f"  point (RAS mm):       {[round(v, 1) for v in phantom['nodule_center_ras']]}")
        print(f"  {answer_line(result)}")
        print(f"  outputs: {', '.join(str(out / n) for n in result.outputs.to_json().values())}")
        print(
            "  In 3D Slicer: File > Add Data, choose the phantom NIfTI, heatmap.nii.gz and "
            "segmentation.nii.gz (tick 'LabelMap' for the segmentation); in the slice views set "
            "the heatmap as foreground with the 'Inferno' or 'Hot' colour map."
        )
    if XRAY_MODEL in installed_models():
        image = ensure_radiograph_phantom()
        out = Path(args.out).resolve() / "chest_xray"
        result = engine.analyze_file(image, None, out, overlay=True)
        print(f"Synthetic chest radiograph, {XRAY_MODEL} model (a drawing: its answer shows the")
        print("  mechanics, not the model's accuracy):")
        print(f"  input (PNG): {image}")
        print(f"  {answer_line(result)}")
        print(f"  outputs: {', '.join(str(out / n) for n in result.outputs.to_json().values())}")
    return 0


def run_train_radiographs(args: argparse.Namespace) -> int:
    from medcnn.bundle import XRAY_MODEL, default_bundle_dir
    from medcnn.training.radiograph_experiments import read_config
    from medcnn.training.radiograph_trainer import RadiographTraining

    bundle = default_bundle_dir(XRAY_MODEL)
    config = read_config(bundle, "train.json")
    overrides = {"epochs": args.epochs} if args.epochs is not None else {}
    run_dir = args.run_dir or Path(config["run_dir"])
    metadata = RadiographTraining(
        args.data or Path(config["data_root"]),
        run_dir,
        bundle,
        args.release_dir or run_dir / "bundle",
        args.experiments or (),
        overrides,
    ).run()
    if metadata:  # under torchrun, rank 0 releases and reports
        print(json.dumps(metadata["eval_metrics"], indent=2))
    return 0


def run_train(args: argparse.Namespace) -> int:
    if args.model == "chest_xray_pneumonia":
        return run_train_radiographs(args)
    from medcnn.bundle import default_bundle_dir
    from medcnn.training.loop import CrossValidationTrainer, NoduleMNISTTrainer
    from medcnn.training.recipe import load_train_recipe

    options = {"epochs": args.epochs, "max_steps_per_epoch": args.max_steps}
    recipe = load_train_recipe(  # train.json; the options given override it
        default_bundle_dir(), {k: v for k, v in options.items() if v is not None}
    )
    settings = recipe.settings
    limit = recipe.limit if args.limit is None else args.limit
    if args.source == "lidc" and args.data is None:
        args.data = recipe.data_dir
    data = _data_path(args)
    if args.source == "nodulemnist3d":
        run_dir = args.run_dir or Path("runs/nodulemnist3d")
        release_dir = args.release_dir or run_dir / "bundle"
        summary = NoduleMNISTTrainer(
            data,
            run_dir,
            settings,
            release_dir=release_dir,
            bundle_dir=default_bundle_dir(),
            limit=limit,
            verify=not args.no_verify,
        ).run()
        print(json.dumps(summary["validation"], indent=2))
        print(
            f"validation split above; for the test split: medcnn evaluate --source "
            f"nodulemnist3d --data {data} --bundle {release_dir} --trust-bundle"
        )
        return 0
    run_dir = args.run_dir or recipe.run_dir
    trainer = CrossValidationTrainer(
        data,
        run_dir,
        recipe.folds if args.folds is None else args.folds,
        settings,
        release_dir=args.release_dir or run_dir / "bundle",
        bundle_dir=default_bundle_dir(),
        limit=limit,
        seeds=recipe.seeds if args.seeds is None else args.seeds,
    )
    summary = trainer.run()
    print(json.dumps(summary["nested"], indent=2))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from medcnn.training.evaluation import BundleEvaluator, json_safe

    if args.model == "chest_xray_pneumonia":
        from medcnn.bundle import XRAY_MODEL, default_bundle_dir
        from medcnn.training.radiograph_evaluation import FolderEvaluator
        from medcnn.training.radiograph_experiments import read_config

        data = args.data or Path(
            read_config(default_bundle_dir(XRAY_MODEL), "evaluate.json")["data_dir"]
        )
        metrics = FolderEvaluator(
            data, args.out, args.bundle, args.trust_bundle, held_out=args.held_out
        ).run()
        print(json.dumps(json_safe(metrics), indent=2))
        print(f"metrics.json, predictions.csv, roc.png and reliability.png in {args.out}")
        return 0

    summary = BundleEvaluator(
        _data_path(args),
        args.out,
        args.bundle,
        every=args.every,
        trusted=args.trust_bundle,
        source=args.source,
        verify=not args.no_verify,
        held_out=args.held_out,
    ).run()
    print(json.dumps(json_safe(summary), indent=2))
    if args.source == "nodulemnist3d":
        print(f"metrics.json and predictions.csv in {args.out}")
    else:
        print(f"metrics, predictions, roc.png and reliability.png in {args.out}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from medcnn.app.models import describe_models

    for line in describe_models(paths_only=args.path):
        print(line)
    return 0


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
    "exit-codes": run_exit_codes,
}


def main(argv: list[str] | None = None) -> int:
    verbose = "--verbose" in (argv or sys.argv[1:]) or "-v" in (argv or sys.argv[1:])
    if not verbose:  # nibabel logs its own repairs of odd headers; our sentence is enough
        logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
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
    except Exception as error:
        if verbose:
            traceback.print_exc()
        print(
            f"medcnn: error: unexpected {type(error).__name__}: {error}. Rerun with --verbose "
            "and report it.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
