"""MedCNN: a trained 3D CNN that judges a lung nodule at a clicked point in a CT."""

from medcnn import threads

# Before any module of MedCNN imports torch: its OpenMP library reads these once, as it loads.
threads.configure()

__version__ = "0.5.0"
