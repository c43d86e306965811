"""moevit: a co-design flow for Mixture-of-Experts Vision Transformers on FPGAs.

The sub-packages live in the repository's top-level folders (``model/`` is
``moevit.model``, ``hw/`` is ``moevit.hw``, ...); this package holds what they
share: the error types, the build folder and the command line.
"""

__version__ = "0.1.0"
