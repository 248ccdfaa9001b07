"""Online learning: learner core, checkpoints, the Kafka consumer daemon and replay.

Nothing here imports apache_beam or tensorflow: the daemon installs without them.
"""
