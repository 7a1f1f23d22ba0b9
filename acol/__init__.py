"""ACoL: Adversarial Complementary Learning for weakly supervised object localization.

The library behind the pipeline: models, data readers, localization maps and WSOL metrics.
Importing it does no work; each submodule is imported where it is used.
"""

__version__ = "0.1.0"
