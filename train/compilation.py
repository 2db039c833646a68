"""JAX's persistent compilation cache: a program compiled once is kept on disk and read back by
every later process that compiles the same program (a resume, a restart after preemption, the
same config again, an evaluation), instead of compiled again.

On by default in `~/.cache/descent/jax` (`compile_cache` in the config; '' turns it off). A
process keeps the first setting it is given: JAX reads its cache folder once. A folder JAX was
given itself (`JAX_COMPILATION_CACHE_DIR`) wins over the config's. The cache holds compiled
programs only, keyed by the program, the devices and XLA's options, so a changed model or
mesh compiles anew; nothing of a run's results is read from it.
"""
import os

import jax


def use_cache(folder: str) -> str | None:
    """Turns the cache on in `folder` ('' leaves it off) unless this process has one already;
    returns the folder in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current or not folder:
        return current or None
    path = os.path.abspath(os.path.expanduser(folder))
    jax.config.update("jax_compilation_cache_dir", path)
    # every program, however quick to compile: a run's dozen small ones add up at each start
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
