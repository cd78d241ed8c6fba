"""Root pytest configuration: the XLA settings of the command line apply to the tests too
(see ppl_bandits/runtime.py); this runs before any test module starts JAX."""

from ppl_bandits.runtime import configure_cpu

configure_cpu()
