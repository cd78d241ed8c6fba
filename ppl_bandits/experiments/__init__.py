"""Named experiments behind ``ppl-bandits simulate``: the registry, the explicit catalogue,
each family's experiments, ablations and the simulation report."""
