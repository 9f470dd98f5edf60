"""The stages: each a function from artifacts to artifacts with a typed config (one module each)."""

# The order `leaneye-compress build` runs them in (build.py); here, where the command line can
# read it without importing PyTorch.
BUILD_STAGES = ("prune", "distill", "export", "calibrate", "qad", "report")
