"""SemiEvol Studio: semi-supervised adaptation of a language model (Luo et al. 2024).

The library is one package per part (see each package's docstring, and the import rule in
tests/test_architecture.py); import the modules you need (`semievol.workspace.store`,
`semievol.rounds.steps`, ...). This package import stays light on purpose so that the CLI
starts fast (no torch at import time).
"""

import os

# Before torch loads: OpenMP threads that busy-wait between parallel regions make a 2-core
# machine 10-35x slower whenever another process (the app, a second run) also computes;
# passive waiting costs nothing measurable when alone (bench/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from semievol.errors import SemiEvolError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["SemiEvolError", "__version__"]
