"""Training the chest X-ray model: its data, a member, the experiments the model card compares,
the release and its evaluation."""
