"""Checkpoints: a learner's state, its source positions and metrics, kept safe between runs.

Owns `store` (atomic, signed checkpoints in a local directory, GCS or S3, and the one LATEST
reader), `persistence` (the bridge: the one place where a learner or a model set becomes a
checkpoint and back, and the checkpoint cadence), `units` (the one keyed layout: a unit per
partition, key, replay or serve, read merged by every reader) and `lease` (which instance is the
active writer). May import the base of `online` and `learning`; never consume, replay or serving.
"""
