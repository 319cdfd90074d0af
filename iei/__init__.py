"""IEI: Image Embedding Inference."""

__version__ = "0.1.0"
