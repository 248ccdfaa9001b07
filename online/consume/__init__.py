"""``riverbeam consume``: the Kafka consumer daemon, with exactly-once model state and outputs.

Owns `daemon` (the consumer group member: partitions to learning units, rebalances, standby
and lease, checkpoints) and `outputs` (dead-letter and prediction records written exactly once
in Kafka transactions). May import the base of `online`, `learning` and `checkpoints`; never
replay or serving.
"""
