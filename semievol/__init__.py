"""SemiEvol Studio: semi-supervised adaptation of a language model (Luo et al. 2024).

Import the parts you need (`semievol.store`, `semievol.data`, ...); this package import stays
light on purpose so that the CLI starts fast (no torch at import time).
"""

from semievol.errors import SemiEvolError

__version__ = "0.1.0"
__all__ = ["SemiEvolError", "__version__"]
