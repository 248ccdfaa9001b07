"""Beam pipelines of riverbeam: preprocessing, streaming learning and the event archive.

Each module exposes a `PipelineOptions` subclass, its composite transforms and ``run(argv)``;
`pipelines.templates` turns any of them into a Dataflow flex or classic template.
"""
