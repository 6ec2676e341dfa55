"""The README's tables as data, so tests can hold the program to what the README promises."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_CARD = (
    Path(__file__).resolve().parents[1] / "monai_bundle" / "lung_nodule_ct" / "docs" / "README.md"
)


def readme_table(after: str, document: Path = README) -> list[list[str]]:
    """The cells of the first table after the text ``after``, without its header and rule."""
    text = document.read_text().split(after, 1)[1]
    table = text[text.index("\n|") + 1 :].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def table_header(after: str, document: Path = README) -> list[str]:
    """The header cells of the first table after the text ``after``."""
    text = document.read_text().split(after, 1)[1]
    row = text[text.index("\n|") + 1 :].splitlines()[0]
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def numbers_in(text: str) -> list[float]:
    """The decimal numbers written in a cell or sentence, in order (0.907-0.954 is two)."""
    return [float(n) for n in re.findall(r"\d+\.\d+", text)]
