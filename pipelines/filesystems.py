"""Beam's own filesystems (``gs://``, ``s3://``, local) set up from the standard configuration.

Inside pipelines, files go through Beam's ``FileSystems`` so that workers read and write them
in parallel. `configure_filesystems` fills Beam's ``S3Options`` (endpoint, region) from the
standard AWS environment (`core.s3.beam_s3_options`) where the flags leave them unset, and
registers the options with ``FileSystems`` so that reads made while building the pipeline
(the job's YAML, a CSV header) reach the same endpoint as the workers. Credentials stay with
boto3's own chain (environment, profiles, roles): they never enter the pipeline options.

>>> from apache_beam.options.pipeline_options import PipelineOptions, S3Options
>>> import os
>>> os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
>>> configure_filesystems(PipelineOptions(["--s3_region_name=eu-west-3"])).view_as(S3Options).s3_endpoint_url
'http://127.0.0.1:9'
>>> del os.environ["AWS_ENDPOINT_URL"]
"""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options

from core.s3 import beam_s3_options


def configure_filesystems(options: PipelineOptions) -> PipelineOptions:
    """Fill unset S3 options from the AWS environment and register `options` with ``FileSystems``."""
    view = options.view_as(S3Options)
    for name, value in beam_s3_options().items():
        if getattr(view, name, None) is None:
            setattr(view, name, value)
    FileSystems.set_options(options)
    return options
