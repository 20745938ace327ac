"""Test configuration: strict JAX and the hypothesis profiles.

Profiles (choose with HYPOTHESIS_PROFILE=...):
  ci        the default; derandomized, sized so the whole suite runs in a few
            minutes on 2 CPU cores.
  thorough  thousands of examples per property, for long runs before a release.
"""

import os

import jax
from hypothesis import HealthCheck, settings

# TF32 / bf16 matmuls on accelerators would break float32 comparisons.
jax.config.update("jax_default_matmul_precision", "highest")
# Hand-written backward code must broadcast explicitly (b[None, :]).
jax.config.update("jax_numpy_rank_promotion", "raise")

_common = dict(
    deadline=None,  # every new shape compiles anew under jit
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
