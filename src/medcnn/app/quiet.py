"""Only MedCNN's own sentence on stderr: the libraries' warnings are silenced at the edges.

numpy's ``RuntimeWarning`` (an overflowing rescale slope), nibabel's and pydicom's logged
repairs of odd headers and ITK's or GDCM's printed warnings would otherwise come before the one
sentence a failure ends in. The command line (without ``--verbose``) and the worker call
``quiet_libraries`` once, before any image is read; the engine itself never prints.
"""

from __future__ import annotations

import logging
import warnings

LIBRARY_LOGGERS = ("nibabel", "pydicom", "PIL", "matplotlib")


def quiet_libraries() -> None:
    """Silence the warnings the libraries that read and write images print by themselves."""
    warnings.simplefilter("ignore")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
