"""Command groups of the `riverbeam` CLI: each module has ``register(subparsers)``."""
