"""Root pytest configuration.

The XLA settings of the command line apply to the tests too (see ppl_bandits/runtime.py);
``configure_cpu`` runs before any test module starts JAX.

The suite compiles several thousand XLA programs, and on a 2-core CPU compilation is most of
its time. Many programs recur across test modules (the same agent, runner or NUTS kernel at
the same shapes), so the tests share JAX's persistent compilation cache: a program compiled
once is loaded from disk by every later module, by the other pytest-xdist worker, and by the
notebook kernels and subprocesses the tests start (they inherit the environment). The cache
lives in ``.pytest_cache/jax-compilation`` (``make clean`` removes it), is keyed by the
program, the XLA flags and the library versions (about 50 MB a pass; it grows only as the
code changes). A clean clone starts it empty; ``JAX_COMPILATION_CACHE_DIR`` set by the caller
takes precedence. JAX writes entries without a lock; a half-written entry read by another
process is compiled afresh (its warning is filtered in ``pyproject.toml``).
"""

import os
from pathlib import Path

import pytest

from ppl_bandits.runtime import configure_cpu

configure_cpu()

#: Settings of JAX's persistent compilation cache for the test suite (environment variables,
#: read when JAX is first imported, so that subprocesses and notebook kernels use them too).
_CACHE_SETTINGS = {
    "JAX_COMPILATION_CACHE_DIR": str(Path(__file__).parent / ".pytest_cache" / "jax-compilation"),
    # Cache every program, however fast it compiled (most of the suite's are small) and
    # however small (-1: no size floor).
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}
for _name, _value in _CACHE_SETTINGS.items():
    os.environ.setdefault(_name, _value)


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
