"""Root pytest configuration.

The XLA settings of the command line apply to the tests too (see ppl_bandits/runtime.py);
``configure_cpu`` runs before any test module starts JAX.
"""

import os

import pytest

from ppl_bandits.runtime import configure_cpu

configure_cpu()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    The suite compiles thousands of XLA programs in one process; each CPU executable keeps
    memory mappings, and a long session can reach the kernel's map-count limit
    (vm.max_map_count), at which point LLVM aborts the process inside a later compilation.
    Modules rarely share programs, so clearing between modules costs little. Set
    PPL_BANDITS_REPORT_MAPS=1 to print the process's map count after each module.
    """
    yield
    import jax

    if not os.environ.get("PPL_BANDITS_KEEP_CACHES"):
        jax.clear_caches()
    if os.environ.get("PPL_BANDITS_REPORT_MAPS"):
        with open("/proc/self/maps") as fh:
            print(f"\n[memory maps after module: {sum(1 for _ in fh)}]")
