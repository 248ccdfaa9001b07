"""riverbeam's shared lowest layer: typed errors, YAML configuration, storage and event time.

Package layering (lower never imports higher, and no import cycles, function-level imports included)::

    core                    errors and exit codes, configuration, storage (local, gs://, s3://), event time
        <- transforms       feature specs, fitted transforms
        <- online           learners, checkpoints, Kafka daemon, replay
        <- pipelines        Beam jobs, Dataflow templates
        <- riverbeam        the `riverbeam` command and the Python API

`tests/test_layering.py` enforces it.
"""

__version__ = "0.1.0"
