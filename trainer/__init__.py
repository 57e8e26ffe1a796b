"""The core of the trainer: CLI, run directories, config checks and shared building blocks.

``trainer.*`` never imports ``modules``, ``datamodules`` or ``callbacks`` (except ``trainer.cli``).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
