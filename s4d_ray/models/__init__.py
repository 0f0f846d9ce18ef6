"""PyTorch models of the pipeline, each loading its official checkpoint unchanged."""
