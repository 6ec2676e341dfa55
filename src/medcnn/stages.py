"""The stages of one analysis, in order: the names the progress callback reports, the share of
the work done when each starts, and a title a viewer can show.

One definition for the engine (``app.analysis`` reports them), the command line's log and the
worker, whose hello hands them to the 3D Slicer extension, which does not import the engine.
"""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    name: str
    fraction: float  # of the whole analysis done when the stage starts, 0..1
    title: str


READING = Stage("reading", 0.0, "Reading the scan")
PREPROCESSING = Stage("preprocessing", 0.2, "Preprocessing")
NETWORK = Stage("network", 0.3, "Running the network")
HEATMAP = Stage("heatmap", 0.6, "Computing the heatmap")
WRITING = Stage("writing", 0.9, "Writing the results")
DONE = Stage("done", 1.0, "Done")

STAGES: tuple[Stage, ...] = (READING, PREPROCESSING, NETWORK, HEATMAP, WRITING, DONE)
