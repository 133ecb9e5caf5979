"""Hydra plugins of unlearn-bench (``hydra_plugins`` is Hydra's namespace for plugins: no ``__init__`` there)."""
