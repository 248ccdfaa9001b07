"""``serve.yaml``'s sections (`ServeJobConfig`, `ServeConfig`) live in `online.config`, beside every other job's.

This name stays only for imports written before they moved there; new code imports `online.config`.
"""

from online.config import ServeConfig, ServeJobConfig  # noqa: F401
