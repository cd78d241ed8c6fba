"""The mixed-effect experiments of Aouali, Kveton, Katariya (2023), Fig. 2: ``mets-linear`` and
``mets-logistic``.
"""

from __future__ import annotations

from ppl_bandits.core.types import Agent
from ppl_bandits.experiments.registry import ExperimentSpec, check_positive_ints
from ppl_bandits.mixed_effect.catalog import make_agent, resolve_agent_name
from ppl_bandits.mixed_effect.environment import mixed_effect_environment

__all__ = [
    "FIG2_DEFAULTS",
    "mixed_effect_agents",
    "mixed_effect_builder",
    "register_experiments",
]


def mixed_effect_agents(settings: dict, agents, default_agents) -> list[Agent]:
    """The meTS-family agents of an experiment: ``agents`` (names a user asked for) or
    ``default_agents``, built for ``settings["num_rounds"]`` and its factored variant."""

    names = default_agents if agents is None else tuple(resolve_agent_name(a) for a in agents)
    return [
        make_agent(n, horizon=settings["num_rounds"], factored_variant=settings["factored_variant"])
        for n in names
    ]


def mixed_effect_builder(reward: str, default_agents: tuple[str, ...]):
    def build(settings: dict, agents):

        check_positive_ints(settings, ("num_actions", "num_effects", "dim"))
        if settings["factored_variant"] not in ("mean-field", "published"):
            raise ValueError(
                f"factored_variant is {settings['factored_variant']!r}; "
                "expected mean-field or published"
            )
        settings["reward"] = reward
        env = mixed_effect_environment(
            settings["num_actions"],
            settings["num_effects"],
            settings["dim"],
            reward=reward,
            context=settings["context"],
        )
        return env, mixed_effect_agents(settings, agents, default_agents)

    return build


#: Defaults of the Fig. 2 experiments (Aouali, Kveton, Katariya 2023).
FIG2_DEFAULTS = {
    "num_actions": 100,
    "num_effects": 3,
    "dim": 2,
    "num_rounds": 5000,
    "num_runs": 50,
    "context": "shared",
    "factored_variant": "mean-field",
}


def register_experiments(register) -> None:
    """Register ``mets-linear`` and ``mets-logistic`` with ``register`` (paper Fig. 2)."""
    register(
        ExperimentSpec(
            "mets-linear",
            "paper Fig. 2 (left), Gaussian rewards",
            FIG2_DEFAULTS,
            mixed_effect_builder(
                "linear", ("meTS-Lin", "meTS-Lin-Fa", "HierTS", "LinTS", "LinUCB")
            ),
        )
    )
    register(
        ExperimentSpec(
            "mets-logistic",
            "paper Fig. 2 (right), logistic rewards",
            FIG2_DEFAULTS,
            mixed_effect_builder(
                "logistic", ("meTS-GLM", "meTS-GLM-Fa", "meTS-Lin", "HierTS", "GLM-TS", "UCB-GLM")
            ),
        )
    )
