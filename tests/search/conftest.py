"""The search tests compile tiny train steps several times; share the training tests'
session-wide persistent compilation cache."""
from tests.training.conftest import compilation_cache  # noqa: F401  (a session fixture)
