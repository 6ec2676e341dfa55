"""The MONAI bundle that ships the model: where it is, whether to trust it, and loading it.

A bundle's configs can run Python (``$`` expressions) and its weights are a pickle-based file,
so MedCNN loads only the bundle it ships, or one the user explicitly marks as trusted, and only
weights whose SHA-256 matches the bundle's ``metadata.json``, with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from medcnn.errors import ModelIntegrityError
from medcnn.network import NoduleEnsemble
from medcnn.preprocessing import PatchSpec

WEIGHTS = Path("models") / "model.pt"


def default_bundle_dir() -> Path:
    """The shipped bundle: beside the source tree (a checkout or the Slicer extension) or
    installed under ``<prefix>/share/medcnn``; ``MEDCNN_BUNDLE`` overrides for developers."""
    if os.environ.get("MEDCNN_BUNDLE"):
        return Path(os.environ["MEDCNN_BUNDLE"]).resolve()
    for candidate in (
        Path(__file__).resolve().parents[2] / "monai_bundle",
        Path(__file__).resolve().parent / "monai_bundle",
        Path(sys.prefix) / "share" / "medcnn" / "monai_bundle",
    ):
        if (candidate / "configs" / "metadata.json").exists():
            return candidate
    raise ModelIntegrityError(
        "The MedCNN model bundle was not found; reinstall MedCNN or set MEDCNN_BUNDLE to the "
        "monai_bundle folder."
    )


def read_metadata(bundle_dir: Path) -> dict:
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelIntegrityError(
            f"The bundle's metadata {path} cannot be read ({error}); reinstall MedCNN."
        ) from error


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_trusted(bundle_dir: Path, trusted: bool) -> None:
    """Only the shipped bundle runs unless the user said another one is trusted."""
    try:
        shipped = default_bundle_dir()
    except ModelIntegrityError:
        shipped = None
    if not trusted and (shipped is None or Path(bundle_dir).resolve() != shipped):
        raise ModelIntegrityError(
            f"The bundle {bundle_dir} is not the one MedCNN ships; bundles can run code, so pass "
            "--trust-bundle if you trust it."
        )


def verified_weights_path(bundle_dir: Path) -> tuple[Path, str]:
    """The weights file, after its SHA-256 matched ``metadata.json``."""
    metadata = read_metadata(bundle_dir)
    expected = metadata.get("medcnn", {}).get("weights_sha256")
    path = Path(bundle_dir) / WEIGHTS
    if not path.exists():
        raise ModelIntegrityError(f"The model weights {path} are missing; reinstall MedCNN.")
    actual = sha256_of(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"The model weights {path} do not match the SHA-256 in the bundle's metadata.json "
            "(tampered or corrupted); reinstall MedCNN."
        )
    return path, actual


def inference_config(bundle_dir: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(Path(bundle_dir) / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    return parser


def load_patch_spec(bundle_dir: Path | str | None = None) -> PatchSpec:
    """The preprocessing definition of the bundle's ``inference.json`` (``preprocessing``)."""
    bundle_dir = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    values = parser.get("preprocessing", {})
    allowed = {f.name for f in fields(PatchSpec)}
    return PatchSpec(**{k: v for k, v in values.items() if k in allowed})


def load_ensemble(bundle_dir: Path, trusted: bool = False) -> tuple[NoduleEnsemble, dict]:
    """The verified model in eval mode, and the metadata describing it."""
    check_trusted(bundle_dir, trusted)
    metadata = read_metadata(bundle_dir)
    path, sha = verified_weights_path(bundle_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        members = len({key.split(".")[1] for key in state if key.startswith("members.")})
        model = NoduleEnsemble(n_members=members)
        model.load_state_dict(state)
    except Exception as error:  # a pickle or shape error: the file is not our model
        raise ModelIntegrityError(
            f"The model weights {path} cannot be loaded ({type(error).__name__}); reinstall MedCNN."
        ) from error
    model.eval()
    info = {
        "name": metadata.get("name", "medcnn"),
        "version": metadata.get("version", "unknown"),
        "weights_sha256": sha,
        "threshold": float(metadata.get("medcnn", {}).get("threshold", 0.5)),
    }
    return model, info
