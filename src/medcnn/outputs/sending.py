"""Sending written DICOM results to an archive: DICOM C-STORE (pynetdicom) or DICOMweb
STOW-RS (HTTP). Nothing is sent unless asked; a failure is one sentence (exit code 16) and the
files stay where they were written.
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

import pydicom

from medcnn.errors import SendError, UsageError
from medcnn.outputs.result import Result

CALLING_AE_TITLE = "MEDCNN"
TIMEOUT_S = 30.0
_STORE_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")
# C-STORE statuses that mean the archive kept the instance (0x0000 success; 0xB000, 0xB006,
# 0xB007: kept, with a warning about coercion or elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


def store_destination(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` as its three parts, or one sentence (exit code 2) saying what is wrong."""
    match = _STORE_DESTINATION.match(text.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise UsageError(
            f"--store {text!r} is not AET@HOST:PORT (for example ORTHANC@localhost:4242)."
        )
    return match["aet"], match["host"], int(match["port"])


def check_destinations(store_to: str | None, stow_to: str | None) -> None:
    """Refuse a malformed destination before any work (exit code 2)."""
    if store_to is not None:
        store_destination(store_to)
    if stow_to is not None:
        _check_stow_url(stow_to)


def send_results(result: Result, out: Path, store_to: str | None, stow_to: str | None) -> list[str]:
    """Send the DICOM files an analysis wrote in ``out`` to each destination asked; returns
    the line saying so for each destination, or raises ``SendError`` at the first failure."""
    outputs = result.outputs
    names = (outputs.dicom_segmentation, outputs.dicom_heatmap, outputs.dicom_report)
    files = [Path(out) / name for name in names if name is not None]
    sent = []
    if store_to is not None:
        store(files, store_to)
        sent.append(f"sent {len(files)} DICOM objects to {store_to}")
    if stow_to is not None:
        stow(files, stow_to)
        sent.append(f"sent {len(files)} DICOM objects to {stow_to}")
    return sent


def store(files: Sequence[Path], destination: str, timeout_s: float = TIMEOUT_S) -> None:
    """Send ``files`` by C-STORE to ``AET@HOST:PORT``, each in its own SOP class and transfer
    syntax; every instance must be kept, or ``SendError`` says which was not."""
    from pynetdicom import AE  # only when sending

    # pynetdicom logs each failure on its own; the SendError below is the one sentence.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    called, host, port = store_destination(destination)
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=CALLING_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(*syntax)
    where = f"{called} at {host}:{port}"
    not_sent = f"the files stay in {Path(files[0]).parent}, not sent"
    try:
        association = ae.associate(host, port, ae_title=called)
    except OSError as error:
        raise SendError(f"{where} cannot be reached ({error}); {not_sent}.") from error
    if not association.is_established:
        why = (
            "rejected the association"
            if association.is_rejected
            else "cannot be reached or did not answer"
        )
        raise SendError(
            f"{where} {why} (check its AE title, host, port and that it accepts "
            f"{CALLING_AE_TITLE}); {not_sent}."
        )
    try:
        for path, dataset in zip(files, datasets, strict=True):
            status = association.send_c_store(dataset)
            code = int(status.Status) if "Status" in status else None
            if code not in STORED:
                reason = "no answer" if code is None else f"status 0x{code:04X}"
                raise SendError(f"{where} refused {Path(path).name} ({reason}); {not_sent}.")
    finally:
        association.release()


def _check_stow_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--stow {url!r} is not an http(s) URL of a DICOMweb service.")


def stow(files: Sequence[Path], url: str, timeout_s: float = TIMEOUT_S) -> None:
    """Send ``files`` by DICOMweb STOW-RS: one multipart POST to ``URL/studies`` (``url`` is
    the DICOMweb root, e.g. http://localhost:8042/dicom-web)."""
    _check_stow_url(url)
    boundary = uuid.uuid4().hex
    parts = [
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + Path(path).read_bytes()
        + b"\r\n"
        for path in files
    ]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    request = urllib.request.Request(
        url.rstrip("/") + "/studies",
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    not_sent = f"the files stay in {Path(files[0]).parent}, not sent"
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        raise SendError(
            f"{url} refused the instances (HTTP {error.code} {error.reason}); {not_sent}."
        ) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SendError(f"{url} cannot be reached ({reason}); {not_sent}.") from error
    if status != 200:
        raise SendError(f"{url} kept only some of the instances (HTTP {status}); {not_sent}.")
