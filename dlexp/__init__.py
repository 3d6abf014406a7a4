"""dlexp: a command-line experiment runner for optimizer and regularization studies in PyTorch."""

__version__ = "0.1.0"
