"""The agents of the mixed-effect family by their paper names (one case-insensitive table)."""

from __future__ import annotations

from ppl_bandits.mixed_effect.agents import hier_ts, mets
from ppl_bandits.mixed_effect.baselines import glm_ts, lin_ts, lin_ucb, ucb_glm

__all__ = ["AGENT_NAMES", "make_agent", "resolve_agent_name"]


AGENT_NAMES = (
    "meTS-Lin",
    "meTS-Lin-Fa",
    "meTS-GLM",
    "meTS-GLM-Fa",
    "HierTS",
    "LinTS",
    "LinUCB",
    "GLM-TS",
    "UCB-GLM",
)


def resolve_agent_name(name: str) -> str:
    """The canonical spelling of an agent name, matched case-insensitively.

    >>> resolve_agent_name("mets-lin")
    'meTS-Lin'
    """
    table = {n.lower(): n for n in AGENT_NAMES}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"agent is {name!r}; expected one of {', '.join(AGENT_NAMES)} (any case)"
        ) from None


def make_agent(name: str, *, horizon: int | None = None, factored_variant="mean-field", **kw):
    """Build an agent by its paper name (case-insensitive).

    ``horizon`` is needed by the logistic agents; ``factored_variant`` chooses the mean of
    the "-Fa" agents ("mean-field", the default, or "published").
    """
    canonical = resolve_agent_name(name)
    builders = {
        "meTS-Lin": lambda: mets("gaussian", **kw),
        "meTS-Lin-Fa": lambda: mets("gaussian", factored=factored_variant, **kw),
        "meTS-GLM": lambda: mets("logistic", horizon=horizon, **kw),
        "meTS-GLM-Fa": lambda: mets("logistic", factored=factored_variant, horizon=horizon, **kw),
        "HierTS": lambda: hier_ts(**kw),
        "LinTS": lambda: lin_ts(**kw),
        "LinUCB": lambda: lin_ucb(**kw),
        "GLM-TS": lambda: glm_ts(horizon=horizon, **kw),
        "UCB-GLM": lambda: ucb_glm(horizon=horizon, **kw),
    }
    return builders[canonical]()
