"""MedCNN in a web browser: the 3D Slicer extension's logic on Slicer's own scene, served by
trame-slicer (``medcnn web``).

A front end beside the command line and the Slicer panel, not part of the engine: it imports
Slicer's MRML (``slicer-core``), VTK, trame and the extension's Qt-free library
(``MedCNNExtension/MedCNN/MedCNNLib``), which nothing else in ``medcnn`` may. Only
``medcnn.app.cli`` reaches it, lazily, when the user asks for ``medcnn web``; install it with the
``web`` extra. Modules:

- ``setup``: what must hold before Slicer's libraries load (the extension's library on the path,
  offscreen rendering where there is no display), each missing piece one sentence;
- ``images``: an image into the scene (a file, a DICOM folder, an upload, the phantom), all or
  nothing;
- ``viewer``: the server, its views and panel, driving ``MedCNNLogic`` as the Slicer panel does.
"""
