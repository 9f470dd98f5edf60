"""LeanEye offline: train, prune, distill and INT8-calibrate detection models, and build engines.

May import `leaneye` (the runtime core); `leaneye` never imports this package.
"""

__version__ = "0.1.0"
