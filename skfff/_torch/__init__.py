"""Torch-only building blocks; nothing here knows about scikit-learn."""
