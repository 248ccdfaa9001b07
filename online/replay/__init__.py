"""``riverbeam replay``: history from files through the same learner the stream uses.

Owns `job` (the replay configuration and the choice of mode), `engine` (learn and evaluate over
a file source), `search` (Optuna trials scored by progressive validation), `backfill` (files
into a Kafka topic), `errors_file` (rejected lines as dead-letter records) and `report` (the
leaderboard, curves and CSV/JSON/PNG outputs). May import the base of `online`, `learning` and
`checkpoints`; never consume or serving.
"""
