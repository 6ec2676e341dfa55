"""The README's tables as data, so tests can hold the program to what the README promises."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table(after: str) -> list[list[str]]:
    """The cells of the first table after the text ``after``, without its header and rule."""
    text = README.read_text().split(after, 1)[1]
    table = text[text.index("\n|") + 1 :].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
