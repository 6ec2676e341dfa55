"""MedCNN's Slicer-side library, one file a role:

- ``Runner``: the background analysis process (``InferenceRunner`` protocol, ``WorkerRunner``);
- ``AnalysisLogic``: the scene side, speaking only MRML (``MedCNNLogic``);
- ``InstallLogic``: installing the analysis process's Python packages, after asking;
- ``Parameters``: the user's display settings;
- ``Widget``: the Qt panel, the only module here that needs Qt.

Nothing is imported here, so that each piece can be imported alone: the runner and installer
without MRML, the logic without Qt.
"""
