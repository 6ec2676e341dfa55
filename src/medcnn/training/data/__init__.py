"""Training and evaluation data sources: LIDC-IDRI volumes of interest and NoduleMNIST3D."""
