"""NumPyro models that encode each generative process exactly.

The same model simulates environments (prior predictive, ``rewards=None``) and defines
the ground truth that :mod:`validation` conditions on a recorded bandit history.
"""

from models.diffusion import diffusion_model, sample_diffusion_parameters
from models.linear_bandit import linear_bandit_model, sample_linear_bandit_parameters
from models.mixed_effect import mixed_effect_model, sample_mixed_effect_parameters

__all__ = [
    "diffusion_model",
    "linear_bandit_model",
    "mixed_effect_model",
    "sample_diffusion_parameters",
    "sample_linear_bandit_parameters",
    "sample_mixed_effect_parameters",
]
