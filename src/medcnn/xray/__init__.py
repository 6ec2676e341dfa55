"""The chest radiograph task: pneumonia or not, on a whole frontal radiograph, with a heatmap."""
