"""The fast inference path gives the numbers of the straightforward one.

The model's cross-validated metrics are computed through ``medcnn.nodule.inference.predict``; the
speed work (members as one grouped network, the last box pass reused as the unflipped copy, GradCAM
from the saved activations) must not move them. The straightforward implementation of the same
steps (one member finds the box, the ensemble settles it) is kept here, as plain as it can be
written: each member of ``medcnn.nodule.network``'s ensemble on its own, a separate network call
per pass, and MONAI's ``GradCAM`` with its own forward and backward.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.visualize import GradCAM
from monai_reference import MalignancyLogit, member_subset

import medcnn.app.analysis
from medcnn.app.analysis import Analyzer, FileRequest
from medcnn.bundle import default_bundle_dir, load_engine, load_patch_spec, sign_weights
from medcnn.errors import InputNotFoundError, PointOutsideScanError
from medcnn.nodule.explain import malignancy_heatmap, malignancy_heatmaps
from medcnn.nodule.grouped import GroupedEnsemble
from medcnn.nodule.inference import (
    LOCALISER_MEMBER,
    MAX_BOX_PASSES,
    _central_component,
    box_settled,
    predict,
    predict_many,
)
from medcnn.nodule.network import NoduleEnsemble, ensemble_from_state_dict
from medcnn.nodule.preprocessing import (
    PatchSpec,
    box_mask,
    context_box,
    network_input,
    sample_patch,
)
from medcnn.phantom import NODULE_CENTER_RAS, make_phantom, synthetic_chest
from medcnn.reading import ScanRegion, dicom, image_files, read_scan
from medcnn.training.data.lidc import load_cases
from medcnn.training.metrics import dice
from medcnn.volume import Volume

PROBABILITY_TOLERANCE = 1e-4
HEATMAP_TOLERANCE = 1e-3
MIN_DICE = 0.999
SPEC = load_patch_spec()  # the shipped bundle's preprocessing


# --- the reference: the inference path as written before the speed work ---------------------


def reference_predict(model: NoduleEnsemble, patch, spec: PatchSpec) -> dict:
    def segment(net: NoduleEnsemble, x: np.ndarray) -> np.ndarray:
        out = net.member_outputs(torch.from_numpy(x)[None])
        return out["segmentation"][0].mean(0).numpy()

    first_member = member_subset(model, [LOCALISER_MEMBER])
    with torch.inference_mode():
        box = context_box(None, spec)
        passes = 0
        while passes < MAX_BOX_PASSES:
            net = first_member if passes == 0 else model
            passes += 1
            new_box = context_box(
                _central_component(segment(net, network_input(patch, box, spec))), spec
            )
            if (net is model or len(model.members) == 1) and box_settled(new_box, box):
                break
            box = new_box
        x = network_input(patch, box, spec)
        out = model.member_outputs(torch.from_numpy(x)[None])
        probabilities = model.combine(out["features"][0]).numpy()
        segmentation = out["segmentation"][0].mean(0).numpy()
    return {"probabilities": probabilities, "segmentation": segmentation, "x": x, "passes": passes}


def reference_heatmap(model: NoduleEnsemble, x: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(x)[None]
    maps = []
    for member in model.members:
        cam = GradCAM(nn_module=MalignancyLogit(member).eval(), target_layers="net.dec2")
        with torch.enable_grad():
            # MONAI's default normaliser maps (min, max) to (1, 0): flip it back
            maps.append(1.0 - cam(batch, class_idx=0)[0, 0].detach().numpy())
    heat = np.mean(maps, axis=0)
    span = float(heat.max() - heat.min())
    return ((heat - heat.min()) / span if span > 0 else np.zeros_like(heat)).astype(np.float32)


# --- comparison --------------------------------------------------------------------------------


def assert_same_answer(
    model: NoduleEnsemble, engine: GroupedEnsemble, patch, spec: PatchSpec
) -> None:
    """The engine (``engine``, the click's) answers as the plain ensemble (``model``) does."""
    expected = reference_predict(model, patch, spec)
    fast = predict(engine, patch, spec)
    assert fast.box_passes == expected["passes"]
    np.testing.assert_array_equal(fast.network_input, expected["x"])
    np.testing.assert_allclose(
        fast.member_probabilities, expected["probabilities"], atol=PROBABILITY_TOLERANCE, rtol=0
    )
    assert abs(fast.probability - float(expected["probabilities"].mean())) < PROBABILITY_TOLERANCE
    fast_mask, expected_mask = fast.segmentation > 0.5, expected["segmentation"] > 0.5
    if expected_mask.any():
        assert dice(fast_mask, expected_mask) > MIN_DICE
    else:
        assert not fast_mask.any()
    np.testing.assert_allclose(fast.segmentation, expected["segmentation"], atol=1e-4)
    heat = malignancy_heatmap(engine, fast.network_input, fast.activations)
    assert np.abs(heat - reference_heatmap(model, expected["x"])).max() < HEATMAP_TOLERANCE
    # Without the saved activations, the heatmap runs the network itself: the same map.
    assert np.abs(heat - malignancy_heatmap(engine, fast.network_input)).max() < 1e-6


def randomized_ensemble(n_members: int = 3, seed: int = 0) -> NoduleEnsemble:
    """Random weights, with batch-norm statistics and PReLU slopes that are not the defaults,
    so every parameter the grouped network copies matters."""
    torch.manual_seed(seed)
    model = NoduleEnsemble(n_members=n_members, hu_window=SPEC.hu_window)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
        model.feature_mean.uniform_(-1, 1)
        model.feature_std.uniform_(0.5, 2)
        model.head_weight.uniform_(-1, 1)
    return model.eval()


def test_a_box_has_settled_when_no_face_moved_more_than_a_voxel() -> None:
    spec = SPEC
    box = box_mask(spec.shape, np.array([8, 8, 10]), np.array([24, 24, 20]))
    nudged = box_mask(spec.shape, np.array([7, 9, 10]), np.array([25, 24, 21]))
    moved = box_mask(spec.shape, np.array([8, 8, 10]), np.array([24, 24, 22]))
    assert box_settled(box, box)
    assert box_settled(nudged, box)
    assert not box_settled(moved, box)
    assert not box_settled(box, context_box(None, spec))  # the first pass's whole cube


def test_the_first_pass_runs_one_member_and_the_judgement_all(monkeypatch) -> None:
    engine = GroupedEnsemble.of(randomized_ensemble())
    patch = sample_patch(synthetic_chest(), np.asarray(NODULE_CENTER_RAS), SPEC)
    widths = []
    real = GroupedEnsemble.forward

    def counting(net, x):
        widths.append(net.n_members)
        return real(net, x)

    monkeypatch.setattr(GroupedEnsemble, "forward", counting)
    prediction = predict(engine, patch, SPEC)
    assert widths[0] == 1
    assert set(widths[1:]) == {3}
    assert prediction.member_probabilities.shape == (3,)


@pytest.mark.parametrize("batch", [1, 4], ids=["grouped", "member_by_member"])
def test_engine_network_is_the_monai_members_run_one_by_one(batch: int) -> None:
    """One input runs grouped, a batch member by member: both are the members run alone."""
    model = randomized_ensemble()
    x = torch.rand(batch, 2, 32, 32, 32)
    with torch.inference_mode():
        expected = model.member_outputs(x)
        out = GroupedEnsemble.of(model)(x)
    for key in ("probability", "features", "segmentation", "encoder", "decoder"):
        torch.testing.assert_close(getattr(out, key), expected[key], atol=2e-5, rtol=1e-4)


def test_engine_network_has_no_batch_norm_and_needs_no_monai() -> None:
    """The click's network is built from the weights alone, batch norms folded in; a fresh
    process that analyses a point never imports MONAI (a third of a cold click)."""
    engine = GroupedEnsemble.of(randomized_ensemble())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in engine.modules())
    code = (
        "import sys, numpy as np\n"
        "from medcnn.app.analysis import Analyzer\n"
        "from medcnn.phantom import NODULE_CENTER_RAS, synthetic_chest\n"
        "Analyzer().analyze_volume(synthetic_chest(), np.asarray(NODULE_CENTER_RAS))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'itk')))\n"
    )
    if not (default_bundle_dir() / "models" / "model.pt").exists():
        pytest.skip("no trained weights in the bundle yet (the release puts them there)")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_engine_network_is_a_copy_taken_when_it_is_built() -> None:
    """Built once (at load): later changes to the model's weights are not the engine's."""
    model = randomized_ensemble(n_members=2)
    x = torch.rand(1, 2, 32, 32, 32)
    first = GroupedEnsemble.of(model)
    with torch.inference_mode():
        before = model.member_outputs(x)["features"]
        model.load_state_dict(randomized_ensemble(n_members=2, seed=1).state_dict())
        torch.testing.assert_close(first(x).features, before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            GroupedEnsemble.of(model)(x).features,
            model.member_outputs(x)["features"],
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="eval mode"):
        GroupedEnsemble.of(model.train())


def test_engine_subsets_are_the_member_subset_views() -> None:
    model = randomized_ensemble(n_members=3)
    engine = GroupedEnsemble.of(model)
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.inference_mode():
        for indices in ([0, 2], [2], [1, 0]):
            view = member_subset(model, indices).member_outputs(x)["features"]
            torch.testing.assert_close(
                engine.subset(indices)(x).features, view, atol=1e-5, rtol=1e-5
            )
        torch.testing.assert_close(
            engine.subset([1, 2]).subset([1])(x).features,
            member_subset(model, [2]).member_outputs(x)["features"],
        )
    assert engine.subset([2]) is engine.subset([2])
    with pytest.raises(IndexError):
        engine.subset([3])


def test_engine_refuses_an_ensemble_without_members() -> None:
    with pytest.raises(ValueError, match="without members"):
        GroupedEnsemble.of(NoduleEnsemble(n_members=0, hu_window=SPEC.hu_window).eval())
    with pytest.raises(ValueError, match="without members"):
        GroupedEnsemble.of(randomized_ensemble(n_members=2)).subset([])


def test_fast_path_matches_reference_on_the_phantom_with_random_weights() -> None:
    spec = SPEC
    patch = sample_patch(synthetic_chest(), np.asarray(NODULE_CENTER_RAS), spec)
    model = randomized_ensemble()
    assert_same_answer(model, GroupedEnsemble.of(model), patch, spec)


@pytest.fixture(scope="module")
def shipped() -> tuple[NoduleEnsemble, GroupedEnsemble, PatchSpec]:
    """The shipped weights as the plain ensemble and as the click loads them (``load_engine``)."""
    bundle = default_bundle_dir()
    if not (bundle / "models" / "model.pt").exists():
        pytest.skip(f"no trained weights in {bundle} yet (the release puts them there)")
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    return (
        ensemble_from_state_dict(state, SPEC.hu_window),
        load_engine(bundle)[0],
        load_patch_spec(),
    )


def test_fast_path_matches_reference_with_the_shipped_model_on_the_phantom(shipped) -> None:
    model, engine, spec = shipped
    patch = sample_patch(synthetic_chest(), np.asarray(NODULE_CENTER_RAS), spec)
    assert_same_answer(model, engine, patch, spec)


@pytest.mark.data
def test_fast_path_matches_reference_with_the_shipped_model_on_real_nodules(
    shipped, shared_data
) -> None:
    """Nodules of every size class from the real data, and the full lung1 CT."""
    model, engine, spec = shipped
    cases = load_cases(shared_data / "lidc_voi", limit=60)
    chosen = sorted(cases, key=lambda c: c.diameter_mm)[::6]
    for case in chosen:
        assert_same_answer(model, engine, sample_patch(case.image, case.center_ras, spec), spec)
    lung1 = read_scan(shared_data / "ct" / "lung1" / "lung1_image.nrrd")
    lung1_patch = sample_patch(lung1, np.array([21.86, 120.54, -611.5]), spec)
    assert_same_answer(model, engine, lung1_patch, spec)


# --- reading only around the point -------------------------------------------------------------


def assert_slab_of(slab: Volume, whole: Volume) -> None:
    """The slab's voxels are the whole scan's voxels, at the same world positions."""
    first = slab.metadata["region"]["first_slice"]
    count = slab.metadata["region"]["slices"]
    assert slab.metadata["scan_shape"] == list(whole.shape)
    np.testing.assert_array_equal(slab.array, whole.array[:, :, first : first + count])
    np.testing.assert_allclose(
        slab.index_to_world(np.zeros((1, 3)))[0],
        whole.index_to_world(np.array([[0.0, 0.0, first]]))[0],
        atol=1e-9,
    )
    np.testing.assert_allclose(slab.affine[:3, :3], whole.affine[:3, :3])


def assert_same_analysis(analyzer: Analyzer, image: Path, point: np.ndarray, tmp: Path) -> dict:
    """``analyze_file`` (which reads around the point) against the whole scan read first."""
    fast = analyzer.analyze_file(image, point, tmp / "fast").to_json()
    whole = analyzer.analyze_volume(read_scan(image), np.asarray(point, dtype=float))
    whole_result = whole.result.to_json()
    for key in ("probability", "member_probabilities", "diameter_mm", "volume_ml", "warnings"):
        assert fast[key] == whole_result[key], key
    assert fast["input"]["shape"] == whole_result["input"]["shape"]
    heatmap, segmentation = (
        nib.load(tmp / "fast" / "heatmap.nii.gz"),
        nib.load(tmp / "fast" / "segmentation.nii.gz"),
    )
    np.testing.assert_allclose(heatmap.affine, whole.heatmap.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(heatmap.dataobj), whole.heatmap.array)
    np.testing.assert_array_equal(np.asarray(segmentation.dataobj), whole.segmentation.array)
    return fast


@pytest.fixture(scope="module")
def random_analyzer(tmp_path_factory: pytest.TempPathFactory) -> Analyzer:
    """A trusted bundle with random weights: reading, not the model, is under test here."""
    bundle = tmp_path_factory.mktemp("bundle")
    shutil.copytree(default_bundle_dir() / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    sign_weights(bundle, randomized_ensemble().state_dict())
    return Analyzer(bundle, trusted=True)


def test_reading_around_a_point_decodes_a_slab_of_the_series(tmp_path: Path) -> None:
    phantom = make_phantom(tmp_path)
    whole = read_scan(phantom["dicom_dir"])
    slab = read_scan(phantom["dicom_dir"], around=ScanRegion(np.asarray(NODULE_CENTER_RAS), 16.0))
    assert slab.shape[2] < whole.shape[2]
    assert_slab_of(slab, whole)
    assert set(slab.metadata) == set(whole.metadata) | {"scan_shape", "region"}
    # NIfTI reads the same slab of its last axis.
    around = ScanRegion(np.asarray(NODULE_CENTER_RAS), 16.0)
    nifti_slab, nifti = read_scan(phantom["nifti"], around=around), read_scan(phantom["nifti"])
    assert_slab_of(nifti_slab, nifti)
    # A region missing the scan reads the whole scan, as without a region.
    far = ScanRegion(np.array([0.0, 0.0, 5000.0]), 16.0)
    assert read_scan(phantom["dicom_dir"], around=far).shape == whole.shape


def oblique_itk_image(nifti: Path) -> sitk.Image:
    """The phantom tilted by 0.3 rad about a slanted axis, with its first axis flipped (LPS)."""
    image = sitk.ReadImage(str(nifti))
    tilt = sitk.VersorTransform((0.2, 0.5, 0.8), 0.3).GetMatrix()
    direction = np.asarray(tilt).reshape(3, 3) @ np.diag([-1.0, 1.0, 1.0])
    image.SetDirection(direction.ravel().tolist())
    return image


@pytest.mark.parametrize(
    "name, compressed", [("raw.nrrd", False), ("zipped.nrrd", True), ("raw.mha", False)]
)
def test_nrrd_and_metaimage_read_only_the_slab_around_the_point(
    tmp_path: Path, name: str, compressed: bool
) -> None:
    """3D Slicer hands MedCNN uncompressed NRRD: a click reads the slab it needs from it."""
    phantom = make_phantom(tmp_path / "phantom")
    path = tmp_path / name
    sitk.WriteImage(oblique_itk_image(phantom["nifti"]), str(path), useCompression=compressed)
    whole = read_scan(path)
    point = whole.index_to_world(np.array([[20.0, 30.0, 24.0]]))[0]
    slab = read_scan(path, around=ScanRegion(point, 16.0))
    assert slab.shape[2] < whole.shape[2]
    assert_slab_of(slab, whole)
    assert set(slab.metadata) == set(whole.metadata) | {"scan_shape", "region"}
    assert slab_mapped_from_disk(path) == (name == "raw.nrrd")


def slab_mapped_from_disk(path: Path) -> bool:
    """Whether a click's slab of this file comes straight from disk rather than through ITK."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return image_files._raw_nrrd_slab(path, reader, 2, 5) is not None


def handmade_nrrd(path: Path, voxels: np.ndarray, endian: str, data_file: str | None) -> None:
    """An NRRD written by hand, as other writers than ITK make them: comments, key:=value
    pairs, big-endian voxels, or a detached header (``.nhdr``) naming its data file."""
    x, y, z = voxels.shape
    header = [
        "NRRD0004",
        "# written by a test, not by ITK",
        "type: int16",
        "dimension: 3",
        "space: right-anterior-superior",
        f"sizes: {x} {y} {z}",
        "space directions: (0,0.8,0) (-0.7,0,0) (0,0,2.5)",
        "kinds: domain domain domain",
        f"endian: {endian}",
        "encoding: raw",
        "space origin: (-12.5,30,-40)",
        "scanner:=phantom",
    ]
    data = voxels.transpose(2, 1, 0).astype(">i2" if endian == "big" else "<i2").tobytes()
    if data_file is None:
        path.write_bytes(("\n".join(header) + "\n\n").encode() + data)
    else:
        path.write_text("\n".join([*header, f"data file: {data_file}"]) + "\n")
        (path.parent / data_file).write_bytes(data)


@pytest.mark.parametrize("endian, data_file", [("big", None), ("little", "voxels.raw")])
def test_nrrd_of_other_writers_reads_the_same_slab(
    tmp_path: Path, endian: str, data_file: str | None
) -> None:
    rng = np.random.default_rng(1)
    voxels = rng.integers(-1000, 400, size=(40, 36, 30)).astype(np.int16)
    path = tmp_path / ("scan.nhdr" if data_file else "scan.nrrd")
    handmade_nrrd(path, voxels, endian, data_file)
    whole = read_scan(path)
    # ITK reads it as written: voxel [i, j, k] at the RAS position the header gives
    np.testing.assert_array_equal(whole.array, voxels)
    np.testing.assert_allclose(
        whole.index_to_world(np.array([[1.0, 2.0, 3.0]]))[0],
        [-12.5 - 0.7 * 2, 30 + 0.8 * 1, -40 + 2.5 * 3],
        atol=1e-9,
    )
    point = whole.index_to_world(np.array([[20.0, 18.0, 15.0]]))[0]
    slab = read_scan(path, around=ScanRegion(point, 8.0))
    assert slab.shape[2] < whole.shape[2]
    assert_slab_of(slab, whole)
    assert slab_mapped_from_disk(path) == (data_file is None)


def test_float_nrrd_is_read_whole_around_a_point(tmp_path: Path) -> None:
    """Float voxels elsewhere could be NaN, which only the whole scan's check would see."""
    phantom = make_phantom(tmp_path / "phantom")
    path = tmp_path / "float.nrrd"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(phantom["nifti"])), sitk.sitkFloat32), str(path))
    around = ScanRegion(np.asarray(NODULE_CENTER_RAS), 16.0)
    assert "region" not in read_scan(path, around=around).metadata


def test_analysis_reading_around_the_point_equals_reading_the_whole_scan(
    tmp_path: Path, random_analyzer: Analyzer
) -> None:
    phantom = make_phantom(tmp_path / "phantom")
    nrrd = tmp_path / "phantom.nrrd"  # what 3D Slicer hands over: uncompressed NRRD
    sitk.WriteImage(sitk.ReadImage(str(phantom["nifti"])), str(nrrd), useCompression=False)
    centre = np.asarray(NODULE_CENTER_RAS)
    # The nodule, a point beside it, and soft tissue two slices from the end of the series.
    points = (centre, centre + [3.3, -2.1, 1.7], np.array([0.0, -18.4, -54.0]))
    for n, point in enumerate(points):
        for image in (phantom["dicom_dir"], phantom["nifti"], nrrd):
            assert_same_analysis(random_analyzer, image, point, tmp_path / f"{n}_{image.name}")


@pytest.mark.data
def test_reading_around_the_point_of_the_real_series(
    tmp_path: Path, random_analyzer: Analyzer, shared_data: Path
) -> None:
    series = shared_data / "ct" / "chest_ct_dicom"
    whole = read_scan(series)
    point = np.array([-48.9, -79.7, 35.5])
    slab = read_scan(series, around=ScanRegion(point, 16.0))
    assert_slab_of(slab, whole)
    assert slab.shape[2] <= 16 + 2 + 2 * 2 + 1  # 32 mm of 2 mm slices and the margins
    top = whole.index_to_world(np.array([[256.0, 256.0, whole.shape[2] - 1.0]]))[0]
    for n, where in enumerate((point, top + np.array([0.0, 0.0, -4.0]))):  # and near the end
        assert_same_analysis(random_analyzer, series, where, tmp_path / f"{n}")


# --- nodules judged together, as ``medcnn batch`` does -----------------------------------------


def assert_judged_together_as_alone(
    engine: GroupedEnsemble, patches: list, spec: PatchSpec
) -> None:
    """``predict_many`` and ``malignancy_heatmaps`` give every nodule its ``predict`` answer."""
    together = predict_many(engine, patches, spec)
    heats = malignancy_heatmaps(engine, [p.activations for p in together], spec.shape)
    assert heats.shape == (len(patches), *spec.shape)
    for patch, joint, heat in zip(patches, together, heats, strict=True):
        alone = predict(engine, patch, spec)
        assert joint.box_passes == alone.box_passes
        np.testing.assert_array_equal(joint.network_input, alone.network_input)
        np.testing.assert_allclose(
            joint.member_probabilities,
            alone.member_probabilities,
            atol=PROBABILITY_TOLERANCE,
            rtol=0,
        )
        np.testing.assert_allclose(joint.segmentation, alone.segmentation, atol=1e-4)
        expected = malignancy_heatmap(engine, alone.network_input, alone.activations)
        assert np.abs(heat - expected).max() < HEATMAP_TOLERANCE


def test_nodules_judged_together_get_the_answers_they_get_alone(shipped) -> None:
    _, engine, spec = shipped
    chest = synthetic_chest()
    centre = np.asarray(NODULE_CENTER_RAS)
    # The nodule, points beside it and lung far from it: their boxes settle after different
    # numbers of passes, so the batch shrinks between passes.
    points = (centre, centre + [-6.0, -6.0, 0.0], centre + [0.0, -12.0, 3.0], centre + [0, 30, 0])
    patches = [sample_patch(chest, point, spec) for point in points]
    assert len({p.box_passes for p in predict_many(engine, patches, spec)}) > 1
    assert_judged_together_as_alone(engine, patches, spec)
    # Random weights, whose boxes settle at once: every parameter the batch path uses counts.
    assert_judged_together_as_alone(GroupedEnsemble.of(randomized_ensemble()), patches, spec)


@pytest.mark.data
def test_real_nodules_judged_together_get_the_answers_they_get_alone(shipped, shared_data) -> None:
    _, engine, spec = shipped
    cases = sorted(load_cases(shared_data / "lidc_voi", limit=40), key=lambda c: c.diameter_mm)
    patches = [sample_patch(c.image, c.center_ras, spec) for c in cases[::5]]
    assert_judged_together_as_alone(engine, patches, spec)


def test_analyzing_files_together_writes_what_analyzing_each_writes(
    tmp_path: Path, random_analyzer: Analyzer
) -> None:
    phantom = make_phantom(tmp_path / "phantom")
    centre = np.asarray(NODULE_CENTER_RAS)
    lps_centre = centre * [-1, -1, 1]
    requests = [
        FileRequest(phantom["nifti"], centre, tmp_path / "together" / "0"),
        FileRequest(tmp_path / "missing.nii.gz", centre, tmp_path / "together" / "1"),
        FileRequest(phantom["dicom_dir"], lps_centre, tmp_path / "together" / "2", lps=True),
        FileRequest(phantom["nifti"], centre + [0, 0, 500], tmp_path / "together" / "3"),
        FileRequest(phantom["dicom_dir"], centre + [3.3, -2.1, 1.7], tmp_path / "together" / "4"),
    ]
    outcomes = random_analyzer.analyze_files(requests)
    assert isinstance(outcomes[1], InputNotFoundError)
    assert isinstance(outcomes[3], PointOutsideScanError)
    for index in (1, 3):
        assert not requests[index].out_dir.exists()
    for index in (0, 2, 4):
        request = requests[index]
        alone = tmp_path / "alone" / str(index)
        expected = random_analyzer.analyze_file(
            request.image, request.point, alone, request.lps
        ).to_json()
        got = outcomes[index].to_json()
        for key in ("diameter_mm", "volume_ml", "label", "point", "warnings", "input"):
            assert got[key] == expected[key], key
        assert got["probability"] == pytest.approx(expected["probability"], abs=1e-5)
        assert json.loads((request.out_dir / "result.json").read_text())["point"] == got["point"]
        for name in ("heatmap.nii.gz", "segmentation.nii.gz"):
            written, reference = nib.load(request.out_dir / name), nib.load(alone / name)
            np.testing.assert_allclose(written.affine, reference.affine, atol=1e-9)
            np.testing.assert_allclose(
                np.asarray(written.dataobj), np.asarray(reference.dataobj), atol=HEATMAP_TOLERANCE
            )


def test_when_the_group_fails_each_file_is_analysed_alone(
    tmp_path: Path, random_analyzer: Analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the steps the group shares (the batched network) costs speed, not cases."""
    phantom = make_phantom(tmp_path / "phantom")
    centre = np.asarray(NODULE_CENTER_RAS)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in the batched network")

    monkeypatch.setattr(medcnn.app.analysis, "predict_many", broken)
    requests = [
        FileRequest(phantom["nifti"], centre, tmp_path / "together" / "0"),
        FileRequest(tmp_path / "missing.nii.gz", centre, tmp_path / "together" / "1"),
    ]
    outcomes = random_analyzer.analyze_files(requests)
    assert isinstance(outcomes[1], InputNotFoundError)
    expected = random_analyzer.analyze_file(phantom["nifti"], centre, tmp_path / "alone")
    assert outcomes[0].probability == expected.probability
    assert (requests[0].out_dir / "result.json").exists()


def count_header_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose DICOM header is parsed from now on."""
    parsed: list[Path] = []
    parse = dicom._read_slice_header

    def counting(path: Path):
        parsed.append(path)
        return parse(path)

    monkeypatch.setattr(dicom, "_read_slice_header", counting)
    return parsed


def test_a_settled_series_is_parsed_once_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second click on the same series skips its headers, and sees any change."""
    folder = make_phantom(tmp_path)["dicom_dir"]
    monkeypatch.setattr(dicom, "SETTLED_AFTER_S", -60.0)  # files count as settled at once
    monkeypatch.setattr(dicom, "_FOLDER_SCANS", type(dicom._FOLDER_SCANS)())
    parsed = count_header_reads(monkeypatch)
    around = ScanRegion(np.asarray(NODULE_CENTER_RAS), 16.0)
    first = read_scan(folder, around=around)
    n_files = len(parsed)
    assert n_files > 3
    again = read_scan(folder, around=around)
    assert len(parsed) == n_files  # no header parsed again
    np.testing.assert_array_equal(again.array, first.array)
    np.testing.assert_array_equal(again.affine, first.affine)
    assert again.metadata == first.metadata
    # A file touched, or one more file in the folder: every header is read again.
    touched = sorted(folder.iterdir())[2]
    status = touched.stat()
    os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns - 10**9))
    read_scan(folder, around=around)
    assert len(parsed) == 2 * n_files
    (folder / "notes.txt").write_text("not DICOM")
    read_scan(folder, around=around)
    assert len(parsed) == 3 * n_files + 1


def test_a_series_written_just_now_is_parsed_at_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File times are as coarse as the kernel's clock tick: a folder still being written could
    look unchanged after a rewrite, so it is not kept."""
    folder = make_phantom(tmp_path)["dicom_dir"]
    monkeypatch.setattr(dicom, "_FOLDER_SCANS", type(dicom._FOLDER_SCANS)())
    parsed = count_header_reads(monkeypatch)
    read_scan(folder)
    n_files = len(parsed)
    read_scan(folder)
    assert len(parsed) == 2 * n_files
