"""Unlearning methods: one module each, instantiated by Hydra from ``conf/method/<name>.yaml``."""
