"""NumPyro models that encode each generative process exactly.

The same model simulates environments (prior predictive, ``rewards=None``) and defines
the ground truth that :mod:`validation` conditions on a recorded bandit history.
"""

from models.mixed_effect import (
    mixed_effect_model,
    sample_mixed_effect_parameters,
)

__all__ = ["mixed_effect_model", "sample_mixed_effect_parameters"]
