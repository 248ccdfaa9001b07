"""Online learning: River learners fed by Kafka or by files, with checkpoints, replay and serving.

The folders are the wings; each says in its own docstring what it owns and what it may import
(`tests/test_layering.py` checks it). Lowest first:

- the base, here: ``config`` (typed YAML sections), ``events`` (one decoded event into features,
  label, key), ``models`` (River objects from their specification), ``formats`` (JSON, Avro,
  Protobuf record decoding) and ``formats_write`` (predictions, dead letters and backfilled events
  written in those formats), ``readers`` (history files), ``sources`` (what a learning unit reads:
  files, or batches pushed in from the daemon's Kafka poll or serve's requests), ``dead_letters`` (the one rejected-record shape), ``observability``
  (metrics, health, logs) and ``kafka_clients`` (kafka-python and confluent-kafka behind one
  interface). The base imports no wing.
- ``learning``: the learner (predict, score, learn), the learning loop, the learning unit every job
  runs (a source, its learners, checkpoints and sinks: ``step`` and ``checkpoint``), model sets,
  per-key state.
- ``checkpoints``: the checkpoint store (atomic, signed), the bridge between a learner and a
  checkpoint, the keyed layout (units), the lease of the active instance.
- ``consume``: the Kafka consumer daemon (``riverbeam consume``) and its exactly-once outputs.
- ``replay``: history through the same learner (``riverbeam replay``: learn, evaluate, search,
  backfill) and its reports.
- ``serving``: predictions from checkpoints (``riverbeam predict``, ``riverbeam serve``).

Nothing here imports apache_beam or tensorflow: the daemon installs without them.
"""
