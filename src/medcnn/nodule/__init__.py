"""The lung nodule task on CT: what the network sees around a clicked point, the network,
its passes, heatmap and measurements, and what a click refuses."""
