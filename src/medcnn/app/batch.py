"""Many images: a manifest in, ``predictions.csv`` out, in the manifest's order.

A row with a point (``r,a,s``) judges the nodule there in a CT; a row without one judges a
whole chest radiograph (``medcnn.app.engine`` chooses the model per row, and each row's
``result.json`` says which). The table has the same columns for every row; a radiograph's
leaves the point and the nodule's measurements empty.

A case that fails does not stop the others: its ``error`` column says why, and the run ends
with a non-zero exit code. Each case's files go to a folder whose name is derived from its
row number and a sanitised id, never from the image's contents, and always inside the output
folder.

The manifest is read forgivingly but never guessed at: column names ignore case and spaces;
rows whose fields are all empty (spreadsheets export them) are skipped; a row with more
non-empty fields than the header (usually an unquoted comma in a path) fails on its own with a
sentence, as does a row without an image or with a point that is not three numbers. A manifest
that cannot be read at all, has no ``image`` column, only some of ``r,a,s`` or no rows stops
the run before any case.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medcnn import distributed
from medcnn.app.analysis import FileRequest
from medcnn.errors import (
    BatchIncompleteError,
    InputNotFoundError,
    MedCNNError,
    OutputError,
    UsageError,
)
from medcnn.outputs.result import Result, table_columns
from medcnn.outputs.writing import output_folder

REQUIRED_COLUMNS = ("image",)
POINT_COLUMNS = ("r", "a", "s")
# Images analysed together: each context-box pass runs a group's nodules as one batch through
# the network, and a group's radiographs are one batch, read and written on a few threads.
# For nodules eight took about 1.3 times less time each than one at a time on 2 cores and
# sixteen gained nothing more that could be told from the noise; radiographs went from 46 to
# 52 a second from eight to sixteen (benchmarks/README.md).
GROUP_SIZE = 16
# The table shows every task's summary of result.json (medcnn.outputs.result.table_columns).
PREDICTION_COLUMNS = (
    "id",
    "image",
    *POINT_COLUMNS,
    *table_columns(),
    "output_dir",
    "error",
)


class Analyzes(Protocol):
    """What the runner drives: the engine (every model) or one model's analyzer."""

    def analyze_files(self, requests: Sequence[FileRequest]) -> list[Result | Exception]: ...


@dataclass(frozen=True)
class ManifestRow:
    index: int
    id: str
    image: str
    image_path: Path
    point: tuple[str, str, str]
    problem: str = ""


def read_manifest(path: Path | str) -> list[ManifestRow]:
    """Rows of ``image`` (optional ``id``, and ``r,a,s`` for a CT's nodule); image paths
    relative to the manifest."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"The manifest {path} does not exist; give the path of a CSV file."
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            some_point = [c for c in POINT_COLUMNS if c in columns]
            if some_point and len(some_point) < len(POINT_COLUMNS):
                missing += [c for c in POINT_COLUMNS if c not in columns]
            if missing:
                raise UsageError(
                    f"The manifest {path} lacks the column(s) {', '.join(missing)}; its header "
                    "must be image (and optionally id, and r,a,s for nodules in CTs)."
                )
            rows: list[ManifestRow] = []
            for raw in reader:
                extra = [v.strip() for v in raw.pop(None, None) or []]  # beyond the header
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
                if not any(row.values()) and not any(extra):
                    continue
                rows.append(_manifest_row(path, len(rows), row, extra, len(columns)))
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"The manifest {path} is not a readable CSV file ({error}).") from error
    except OSError as error:
        raise InputNotFoundError(
            f"The manifest {path} cannot be read ({error.strerror or error}); check its "
            "permissions."
        ) from error
    if not rows:
        raise UsageError(f"The manifest {path} has no rows; add one line per image (and point).")
    return rows


def _manifest_row(
    path: Path, index: int, row: dict[str, str], extra: list[str], n_columns: int
) -> ManifestRow:
    image = row["image"]
    problem = ""
    if any(extra):
        problem = (
            f"Row {index + 1} has {n_columns + len(extra)} fields but the header has "
            f"{n_columns}; quote image paths that contain commas."
        )
    return ManifestRow(
        index=index,
        id=row.get("id") or str(index + 1),
        image=image,
        image_path=(path.parent / image) if image else path.parent / "",
        point=(row.get("r", ""), row.get("a", ""), row.get("s", "")),
        problem=problem,
    )


def case_folder_name(row: ManifestRow) -> str:
    """A folder name from the row number and a sanitised id: safe on every file system."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", row.id).strip("._")[:60] or "case"
    return f"{row.index + 1:05d}_{safe}"


def parse_point(row: ManifestRow) -> tuple[float, float, float] | None:
    """The row's point, or None where it gives none (a radiograph)."""
    if not any(row.point):
        return None
    try:
        return tuple(float(v) for v in row.point)  # type: ignore[return-value]
    except ValueError as error:
        raise UsageError(
            f"Row {row.index + 1} has a point that is not three numbers ({', '.join(row.point)}); "
            "give r, a and s in millimetres."
        ) from error


# What makes a spreadsheet read a cell as a formula (or as the start of one) when it leads.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A cell a spreadsheet shows as text: one that begins like a formula (a manifest id of
    ``=HYPERLINK(...)``) gets a leading apostrophe; numbers, negative ones too, stay numbers."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        if math.isfinite(float(value)):
            return value
    except ValueError:
        pass
    return "'" + value


def write_predictions(rows: list[dict], path: Path) -> None:
    """Write ``predictions.csv`` atomically: a failed write leaves neither it nor a partial file
    (one sentence, exit code 13). Cells are made safe to open in a spreadsheet."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
        os.replace(tmp, path)
    except OSError as error:
        raise OutputError(
            f"{path} cannot be written ({error.strerror}); free some space or choose another "
            "folder for --out."
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


class BatchRunner:
    """Runs the engine (or one model's analyzer) over a manifest; under ``torchrun`` each rank
    takes its share."""

    def __init__(
        self,
        analyzer: Analyzes,
        manifest: Path | str,
        output_dir: Path | str,
        progress: bool = True,
        lps: bool = False,
        group_size: int = GROUP_SIZE,
        dicom: bool = False,
        store_to: str | None = None,
        stow_to: str | None = None,
    ) -> None:
        """``store_to`` and ``stow_to`` (implying ``dicom``): where each case's DICOM results
        are sent once its folder is written; a case that cannot be sent fails on its own."""
        if group_size < 1:
            raise UsageError(f"The group size must be 1 or more, not {group_size}.")
        self.analyzer = analyzer
        self.manifest = Path(manifest)
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.lps = lps
        self.group_size = group_size
        self.store_to, self.stow_to = store_to, stow_to
        self.dicom = dicom or store_to is not None or stow_to is not None

    def analyze_row(self, row: ManifestRow) -> dict:
        return self.analyze_rows([row])[0]

    def analyze_rows(self, rows: list[ManifestRow]) -> list[dict]:
        """The prediction records of some rows, their nodules analysed together as a group."""
        records, requests, asked = [], [], []
        for row in rows:
            record = {
                "id": row.id,
                "image": row.image,
                "r": row.point[0],
                "a": row.point[1],
                "s": row.point[2],
                "error": "",
            }
            records.append(record)
            try:
                if row.problem:
                    raise UsageError(row.problem)
                if not row.image:
                    raise UsageError(f"Row {row.index + 1} has no image path; add one.")
                point = parse_point(row)
            except MedCNNError as error:
                record["error"] = str(error)
                continue
            out = self.output_dir / "cases" / case_folder_name(row)
            requests.append(FileRequest(row.image_path, point, out, lps=self.lps, dicom=self.dicom))
            asked.append(record)
        outcomes = self.analyzer.analyze_files(requests) if requests else []
        for record, request, outcome in zip(asked, requests, outcomes, strict=True):
            if isinstance(outcome, MedCNNError):
                record["error"] = str(outcome)
            elif isinstance(outcome, Exception):  # one broken case must not stop an archive run
                record["error"] = f"unexpected error: {type(outcome).__name__}: {outcome}"
            else:
                record.update(outcome.summary())
                record["output_dir"] = str(Path(request.out_dir).relative_to(self.output_dir))
                try:
                    self._send(outcome, Path(request.out_dir))
                except MedCNNError as error:  # written, not sent: that case's error alone
                    record["error"] = str(error)
        return records

    def _send(self, result: Result, case: Path) -> None:
        if self.store_to is None and self.stow_to is None:
            return
        from medcnn.outputs.sending import send_results  # only when sending

        send_results(result, case, self.store_to, self.stow_to)

    def run(self) -> Path:
        rows = read_manifest(self.manifest)
        output_folder(self.output_dir)
        # Under torchrun each rank takes rows i % world_size == rank; rank 0 writes the CSV.
        here = distributed.init_process_group("gloo", timeout=distributed.BATCH_TIMEOUT)
        share = here.shard(rows)
        bar = None
        if self.progress:
            from tqdm import tqdm

            desc = "medcnn batch" + (f" (rank {here.rank})" if here.size > 1 else "")
            bar = tqdm(total=len(share), desc=desc, unit="case", position=here.local_rank)
        mine = []
        for start in range(0, len(share), self.group_size):
            group = share[start : start + self.group_size]
            mine.extend(self.analyze_rows(group))
            if bar is not None:
                bar.update(len(group))
        if bar is not None:
            bar.close()
        predictions = self.output_dir / "predictions.csv"
        records = distributed.gather_in_order(mine, here, len(rows))
        if records is None:
            return predictions
        write_predictions(records, predictions)
        failed = sum(1 for r in records if r["error"])
        if failed:
            raise BatchIncompleteError(
                f"{failed} of {len(records)} cases failed; see the error column of {predictions}."
            )
        return predictions
