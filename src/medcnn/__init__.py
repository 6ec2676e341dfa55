"""MedCNN: a trained 3D CNN that judges a lung nodule at a clicked point in a CT."""

__version__ = "0.5.0"
