"""Making and measuring a model: the resumable training loop, its losses and augmentation,
the data sources, cross-validated evaluation, calibration and the release of a bundle."""
