"""riverbeam: Apache Beam preprocessing and online River learning from event streams.

Package layering (lower never imports higher)::

    riverbeam.errors, riverbeam.configuration,
    riverbeam.gcs                               shared base: typed errors, YAML into typed objects, the GCS client
        <- transforms                           feature specs, fitted transforms
        <- online                               learners, checkpoints, Kafka daemon, replay
        <- pipelines                            Beam jobs, Dataflow templates
        <- riverbeam.cli, riverbeam.demo         the `riverbeam` command

`riverbeam.local_stack` (the embedded Kafka broker and GCS emulator) imports nothing of ours.
"""

__version__ = "0.1.0"
