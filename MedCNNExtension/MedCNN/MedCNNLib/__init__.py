"""MedCNN's Slicer-side library, one file a role:

- ``Runner``: the background analysis process (``InferenceRunner`` protocol, ``WorkerRunner``),
  and the engine's stage titles, exit codes and installed models as its hello states them
  (``EngineHello``);
- ``AnalysisLogic``: the scene side, speaking only MRML (``MedCNNLogic``), a small façade over:
- ``TaskLogic``: what a request needs (points in a CT, none for a radiograph), inputs checked,
  volume exported, points (or the whole radiograph) analysed one after another (``AnalysisTask``);
- ``ResultImport``: each answer into the scene as MRML nodes, all or nothing;
- ``Display``: how the results look (heat colours, threshold, segment display, slice views);
- ``InstallLogic``: whether this Slicer can run MedCNN at all (``unsupportedReason``), then
  installing the analysis process's Python packages, after asking;
- ``Parameters``: the user's model choice and display settings;
- ``Widget``: the Qt panel, the only module here that needs Qt.

Nothing is imported here, so that each piece can be imported alone: the runner and installer
without MRML, the logic without Qt.
"""
