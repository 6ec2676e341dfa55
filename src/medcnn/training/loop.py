"""Fold-by-fold training that survives interruption: a checkpoint every epoch, resumed on restart.

Each fold's model learns from the other four folds' patients; its predictions on its own fold
are the honest cross-validated numbers, and the five fold models together are the shipped
ensemble. ``NoduleMNISTTrainer`` trains the same network on NoduleMNIST3D's training split, for
comparison with the MedMNIST benchmark.

A case trains only the outputs it has targets for: a NoduleMNIST3D cube has a label but no
mask, rating or descriptors, so its segmentation, rating and descriptor terms are left out.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from medcnn import distributed
from medcnn.errors import UsageError
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.network import NoduleEnsemble, NoduleNet
from medcnn.nodule.preprocessing import (
    PatchSpec,
    context_box,
    network_input,
    resample,
    sample_patch,
)
from medcnn.outputs.writing import check_output_folder, output_folder
from medcnn.training.augmentation import Augmentation, random_rotation
from medcnn.training.data.lidc import NO_FOLD, NoduleCase, labelled_rows, load_cases, split_refused
from medcnn.training.losses import aux_scales, case_targets, loss_terms, total_loss
from medcnn.training.recipe import TrainSettings, load_train_settings
from medcnn.training.residual_logit import MeasurementOffset, ResidualTraining

log = logging.getLogger(__name__)


def training_example(
    case: NoduleCase, spec: PatchSpec, rng: np.random.Generator | None, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Network input (2, N, N, N) and soft mask target (1, N, N, N) for one nodule.

    Without a mask, the source's own cut-out is the context (the coverage channel marks it), as
    inference sees it with a model that segments nothing; the mask target is then a placeholder
    that the loss leaves out. The random draws are the same either way.
    """
    center, rotation = case.center_ras, None
    margin, min_inplane = spec.box_margin_mm, spec.box_min_inplane_mm
    if rng is not None:
        center = center + rng.uniform(-aug.max_shift_mm, aug.max_shift_mm, size=3)
        rotation = random_rotation(rng, aug.max_tilt_deg)
        margin = rng.uniform(*aug.box_margin_mm)
        min_inplane = rng.uniform(*aug.box_min_inplane_mm)
    patch = sample_patch(case.image, center, spec, rotation)
    if case.mask is None:
        mask, box = np.zeros(spec.shape, dtype=np.float32), context_box(None, spec)
    else:
        mask = resample(case.mask.array, case.mask.affine, spec.shape, patch.affine)
        box_spec = PatchSpec(**{**asdict(spec), "box_min_inplane_mm": min_inplane})
        box = context_box(mask, box_spec, margin_mm=margin)
    if rng is not None:
        noise = rng.normal(0, aug.hu_noise, size=patch.hu.shape) + rng.uniform(-1, 1) * aug.hu_shift
        patch = type(patch)(
            hu=patch.hu + noise.astype(np.float32), coverage=patch.coverage, affine=patch.affine
        )
    return network_input(patch, box, spec), (mask * box)[None].astype(np.float32)


def train_fold(
    cases: list[NoduleCase], fold: int | None, out_dir: Path, settings: TrainSettings
) -> Path:
    """Train on every case outside ``fold`` (all cases when ``fold`` is None); resumable.

    Under ``torchrun`` (``configs/multi_gpu_train.json``) the network is wrapped in
    ``DistributedDataParallel`` and each rank computes its share of every batch, so a step still
    averages the gradient over the whole batch and the schedule is the single-process one; each
    rank draws its own augmentations, batch norm sees each rank's share, and rank 0 alone logs
    and writes checkpoints, in the single-process format. One process: exactly as before.
    """
    here = distributed.world()
    parallel = here.size > 1
    if settings.threads is not None:  # else as medcnn.threads set them for this process
        torch.set_num_threads(
            distributed.threads_per_process(settings.threads) if parallel else settings.threads
        )
    out_dir = Path(out_dir)
    final, checkpoint = out_dir / "model.pt", out_dir / "checkpoint.pt"
    if final.exists():
        log.info("fold %s already trained: %s", fold, final)
        return final
    train = [c for c in cases if fold is None or c.fold != fold]
    smallest = 2 * here.size  # batch norm needs two examples on every process
    if len(train) < smallest:
        outside = "" if fold is None else f" outside fold {fold}"
        raise UsageError(
            f"Training needs at least {smallest} nodules{outside} and has {len(train)}; "
            "give it more nodules."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = case_targets(train, settings.rating3_weight)
    scales = aux_scales(targets, settings.scaled_aux)
    torch.manual_seed(settings.seed + (fold or 0))
    net = NoduleNet()
    if not any(c.has_mask for c in train):
        _segment_nothing(net)
    residual = (
        ResidualTraining(net, MeasurementOffset(settings.spec.hu_window))
        if settings.measured_offset and any(c.has_mask for c in train)
        else None
    )
    trainee: torch.nn.Module = net if residual is None else residual
    optimizer = torch.optim.AdamW(
        trainee.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    steps_per_epoch = len(epoch_batches(np.arange(len(train)), settings.batch_size, smallest))
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.learning_rate,
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    start_epoch = 0
    device = distributed.device()
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        net.load_state_dict(state["model"])
        if ("offset" in state) != (residual is not None):
            raise UsageError(
                f"The checkpoint {checkpoint} was written "
                f"{'without' if residual is not None else 'with'} the measurements' offset; "
                f"resume it with measured_offset={residual is None}, or train in a new run folder."
            )
        if residual is not None:
            residual.offset.load_state_dict(state["offset"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        if "torch_rng" in state:  # dropout continues as if never interrupted
            torch.set_rng_state(state["torch_rng"].cpu())
        log.info("fold %s: resuming at epoch %d", fold, start_epoch)
    model = trainee
    if parallel:
        model.to(device)
        model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            # Sources without masks or ratings leave those heads out of the loss.
            find_unused_parameters=not all(
                c.has_mask and c.has_rating and c.has_descriptors for c in train
            ),
        )
    history_path = out_dir / "history.jsonl"
    for epoch in range(start_epoch, settings.epochs):
        rng = np.random.default_rng([settings.seed, fold if fold is not None else 99, epoch])
        order = rng.permutation(len(train))
        if parallel:  # the same order on every rank, each rank's own augmentations
            rng = np.random.default_rng(
                [settings.seed, fold if fold is not None else 99, epoch, here.rank]
            )
        trainee.train()
        sums: dict[str, float] = {}
        started, seen = time.time(), 0
        for index in epoch_batches(order, settings.batch_size, smallest)[:steps_per_epoch]:
            if parallel:
                index = _rank_share(index, here)
            examples = [
                training_example(train[i], settings.spec, rng, settings.augmentation) for i in index
            ]
            batch = {key: value[index].to(device) for key, value in targets.items()}
            batch["mask"] = torch.from_numpy(np.stack([e[1] for e in examples])).to(device)
            x = torch.from_numpy(np.stack([e[0] for e in examples])).to(device)
            out = model(x) if residual is None else model(x, batch["mask"])
            terms = loss_terms(out, batch, settings)
            loss = total_loss(terms, settings, scales)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(index)
            seen += len(index)
        if parallel:
            keys = list(sums)
            totals = distributed.all_reduce_sum([sums[k] for k in keys] + [seen])
            sums, seen = dict(zip(keys, totals[:-1], strict=True)), int(totals[-1])
            if not here.is_main:
                continue
        record = {
            "fold": fold,
            "epoch": epoch,
            "seconds": round(time.time() - started, 1),
            **{k: round(v / seen, 4) for k, v in sums.items()},
        }
        log.info(json.dumps(record))
        with open(history_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(
            _portable(
                {
                    "model": net.state_dict(),
                    **({} if residual is None else {"offset": residual.offset.state_dict()}),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "torch_rng": torch.get_rng_state(),
                },
                device,
            ),
            tmp,
        )
        tmp.replace(checkpoint)
    if here.is_main:
        tmp = final.with_suffix(".tmp")
        torch.save(_portable(net.state_dict(), device), tmp)
        tmp.replace(final)
    distributed.barrier()
    return final


def epoch_batches(order: np.ndarray, batch_size: int, smallest: int) -> list[np.ndarray]:
    """``order`` cut into batches of ``batch_size``; a last batch under ``smallest`` joins the
    one before it.

    Batch norm cannot standardise one example (the measurements' offset fails on it), and under
    ``torchrun`` each rank takes a share of every batch, so ``smallest`` is two a rank. Without
    the nodule a click refuses, fold 2 of ``lidc_voi`` leaves 673 = 21 x 32 + 1 to train on.
    """
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < smallest:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def _rank_share(index: np.ndarray, here: distributed.World) -> np.ndarray:
    """This rank's samples of a batch; a batch smaller than the world lends one to each rank."""
    share = index[here.rank :: here.size]
    return share if len(share) else index[here.rank % len(index) :][:1]


def _portable(state: object, device: torch.device) -> object:
    """What to save: a GPU run's state moved to the CPU, so checkpoints and weights load
    anywhere; a CPU run's state as it is."""
    if device.type == "cpu":
        return state
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _portable(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [_portable(v, device) for v in state]
    return state


def _segment_nothing(net: NoduleNet) -> None:
    """Make the segmentation head say "no nodule" everywhere, for a model with no mask to learn.

    Left at its random start, the head would draw noise, and inference's context-box search
    would follow it; a model that cannot segment says so, and inference then looks at the whole
    cut-out, as such a model was trained. The loss has no segmentation term for it, so the head
    stays exactly like this.
    """
    with torch.no_grad():
        net.seg_out.weight.zero_()
        assert net.seg_out.bias is not None  # the output convolution has a bias
        net.seg_out.bias.fill_(-10.0)


def train_cross_validation(
    data_dir: Path,
    out_dir: Path,
    folds: list[int] | None = None,
    settings: TrainSettings | None = None,
    limit: int | None = None,
) -> list[Path]:
    """Train one model per patient fold; each is resumable and skipped once finished.

    A nodule whose point a click would refuse (its centre outside its scan, say) is left out:
    the patch there would teach the network its label on the wrong tissue.
    """
    settings = settings or load_train_settings()
    out_dir = Path(out_dir)
    cases = load_cases(Path(data_dir), cache_dir=out_dir / "cache", limit=limit)
    cases, refused = split_refused(cases)
    for case in refused:
        log.warning("left out of training: %s: %s", case["name"], case["reason"])
    folds = sorted({c.fold for c in cases}) if folds is None else folds
    return [train_fold(cases, f, out_dir / f"fold{f}", settings) for f in folds]


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"The limit on nodules (--limit) must be 1 or more, not {limit}.")


def check_folds_hold_nodules(data_dir: Path, folds: list[int], limit: int | None) -> None:
    """Refuse, before any training, a fold with no nodule in the table: its model could not be
    judged, so the release would have nothing to fit or report for it."""
    present = sorted({labels["fold"] for _, labels in labelled_rows(data_dir, limit)} - {NO_FOLD})
    empty = [f for f in folds if f not in present]
    if not empty:
        return
    where = f"the first {limit} rows of {data_dir}" if limit else str(data_dir)
    if not present:
        raise UsageError(
            f"No nodule in {where} has a fold, so no fold model could be judged; add a fold "
            "column to nodules.csv (0-4, all nodules of a patient in one fold)."
        )
    if len(empty) == 1:
        lacking = f"Fold {empty[0]} has no nodule in {where}, so its model"
    else:
        lacking = f"Folds {', '.join(map(str, empty))} have no nodule in {where}, so their models"
    raise UsageError(
        f"{lacking} could not be judged; give --folds from those it has "
        f"({' '.join(map(str, present))})."
    )


class CrossValidationTrainer:
    """``train.json``'s runner: train the fold models, then assemble a release bundle from them.

    The release goes to ``release_dir``, a copy of the shipped bundle's configs with the new
    weights and numbers; copy it over ``monai_bundle/lung_nodule_ct/`` to ship it.
    """

    def __init__(
        self,
        data_dir: Path | str,
        run_dir: Path | str,
        folds: list[int],
        settings: TrainSettings,
        release_dir: Path | str,
        bundle_dir: Path | str,
        limit: int | None = None,
        seeds: list[int] | None = None,
    ) -> None:
        if len(set(folds)) < 2:
            raise UsageError(
                f"Training assembles a release, whose combining head is fitted on the other "
                f"folds' out-of-fold predictions, so it needs at least two folds, not "
                f"{sorted(set(folds))}; give two or more with --folds (the shipped model has "
                "0 1 2 3 4)."
            )
        check_limit(limit)
        for seed in seeds or []:
            replace(settings, seed=seed)  # refuses a seed that could not train, before any does
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.folds, self.settings, self.limit = list(folds), settings, limit
        self.release_dir, self.bundle_dir = Path(release_dir), Path(bundle_dir)
        self.seeds = list(seeds) if seeds else [settings.seed]

    def seed_dir(self, index: int) -> Path:
        """The first seed trains in ``run_dir``, each further one in ``run_dir/seed<N>``."""
        return self.run_dir if index == 0 else self.run_dir / f"seed{self.seeds[index]}"

    def run(self) -> dict:
        from medcnn.training.release import build_release

        check_folds_hold_nodules(self.data_dir, self.folds, self.limit)
        if distributed.world().is_main:  # the rank that builds the release; two would race
            check_output_folder(self.release_dir, "--release-dir")  # on the folders it tries
        distributed.barrier()
        output_folder(self.run_dir, "--run-dir")
        for index, seed in enumerate(self.seeds):
            train_cross_validation(
                self.data_dir,
                self.seed_dir(index),
                self.folds,
                replace(self.settings, seed=seed),
                limit=self.limit,
            )
        if not distributed.world().is_main:  # under torchrun, rank 0 builds the release
            return {}
        if self.release_dir.resolve() != self.bundle_dir.resolve():
            copy_bundle_files(self.bundle_dir, self.release_dir, ("configs", "docs"))
        extra = [self.seed_dir(i) for i in range(1, len(self.seeds))]
        return build_release(
            self.run_dir,
            self.data_dir,
            self.release_dir,
            self.folds,
            limit=self.limit,
            extra_run_dirs=extra,
        )


def copy_bundle_files(bundle_dir: Path, release_dir: Path, parts: tuple[str, ...]) -> None:
    """Start a new bundle from the shipped one's folders ``parts`` and its licence."""
    import shutil

    for part in parts:
        shutil.copytree(Path(bundle_dir) / part, Path(release_dir) / part, dirs_exist_ok=True)
    shutil.copy2(Path(bundle_dir) / "LICENSE", Path(release_dir) / "LICENSE")


class NoduleMNISTTrainer:
    """``medcnn train --source nodulemnist3d``: one NoduleNet on NoduleMNIST3D's training split.

    Same network, augmentation, loss and resumable loop as the LIDC folds, with the malignancy
    head alone learning (the file has no masks, ratings or descriptors). The validation split is
    only reported, never used to choose anything; the threshold stays 0.5, as the MedMNIST
    table's accuracy assumes. The result is a one-member bundle in ``release_dir`` for
    ``medcnn evaluate --source nodulemnist3d``; it does not segment, so it is a benchmark model,
    not one to analyse scans with.
    """

    def __init__(
        self,
        data_path: Path | str,
        run_dir: Path | str,
        settings: TrainSettings,
        release_dir: Path | str,
        bundle_dir: Path | str,
        limit: int | None = None,
        verify: bool = True,
    ) -> None:
        self.data_path, self.run_dir = Path(data_path), Path(run_dir)
        check_limit(limit)
        self.settings, self.limit, self.verify = settings, limit, verify
        self.release_dir, self.bundle_dir = Path(release_dir), Path(bundle_dir)

    def run(self) -> dict:
        from medcnn.training.data.nodulemnist import load_nodulemnist3d
        from medcnn.training.evaluation import evaluate_cases, summarize_benchmark, write_rows
        from medcnn.training.release import THRESHOLD, rounded

        if self.release_dir.resolve() == self.bundle_dir.resolve():
            raise UsageError(
                "A NoduleMNIST3D model cannot replace the shipped bundle (it does not segment); "
                "choose another --release-dir."
            )
        splits = load_nodulemnist3d(self.data_path, self.settings.spec, verify=self.verify)
        check_output_folder(self.release_dir, "--release-dir")
        output_folder(self.run_dir, "--run-dir")
        train, val = splits["train"][: self.limit], splits["val"][: self.limit]
        weights = train_fold(train, None, self.run_dir / "model", self.settings)
        model = NoduleEnsemble(n_members=1, hu_window=self.settings.spec.hu_window)
        model.members[0].load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        rows = evaluate_cases(GroupedEnsemble.of(model), val, self.settings.spec, progress=True)
        write_rows(rows, self.run_dir / "val_predictions.csv")
        validation = rounded(summarize_benchmark(rows, THRESHOLD))
        self._write_bundle(model, validation, THRESHOLD, n_train=len(train))
        summary = {"validation": validation, "bundle": str(self.release_dir)}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _write_bundle(
        self, model: NoduleEnsemble, validation: dict, threshold: float, n_train: int
    ) -> None:
        from medcnn.bundle import sign_weights

        copy_bundle_files(self.bundle_dir, self.release_dir, ("configs",))
        inference_path = self.release_dir / "configs" / "inference.json"
        inference = json.loads(inference_path.read_text())
        inference["network_def"]["n_members"] = 1
        inference_path.write_text(json.dumps(inference, indent=4) + "\n")
        metadata_path = self.release_dir / "configs" / "metadata.json"
        metadata = json.loads(metadata_path.read_text())
        metadata.pop("eval_metrics_nested_head", None)
        metadata.update(
            {
                "name": "MedCNN NoduleNet trained on NoduleMNIST3D (benchmark model)",
                "description": "One MedCNN NoduleNet trained on the training split of "
                f"NoduleMNIST3D ({n_train} nodules, 28 mm cubes at 1 mm) for comparison with "
                "the MedMNIST v2 table. Malignancy only: the file has no masks, so it does not "
                "segment. Not the shipped model.",
                "data_source": "NoduleMNIST3D of MedMNIST v2 (Yang et al. 2023, CC BY 4.0), "
                "derived from LIDC-IDRI",
                "eval_metrics": {"split": "val", **validation},
            }
        )
        own = metadata["medcnn"]  # the model's words, the template's; the release's own numbers
        for key in ("weights_sha256", "check_subset", "not_judged"):
            own.pop(key, None)
        own.update({"member_folds": [], "threshold": threshold, "training_source": "nodulemnist3d"})
        metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
        sign_weights(self.release_dir, model.state_dict())
