"""``riverbeam consume``: the Kafka consumer daemon, with exactly-once model state and outputs.

Owns `daemon` (the consumer group member: partitions to learning units, rebalances, standby
and lease, checkpoints), `outputs` (dead-letter and prediction records written exactly once
in Kafka transactions), `workers` (``--workers N``: a supervisor of N keyed daemon processes in
one group) and `summary` (the daemon's summary as every command prints it). May import the base
of `online`, `learning` and `checkpoints`; never replay or serving.
"""
