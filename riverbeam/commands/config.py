"""``riverbeam config check FILE``: validate a job's configuration without running anything."""

from __future__ import annotations

import importlib

from core.configuration import load_config, read_yaml
from core.errors import ConfigError

# job kind -> "module:Class" of its typed configuration (imported only when needed)
JOB_CONFIGS = {
    "consume": "online.config:ConsumeJobConfig",
    "replay": "online.config:ReplayJobConfig",
    "preprocess": "transforms.config:PreprocessJobConfig",
    "serve": "online.serving.config:ServeJobConfig",
}


def config_class(job: str):
    module, name = JOB_CONFIGS[job].split(":")
    return getattr(importlib.import_module(module), name)


def detect_job(data) -> str:
    """Guess the job kind from a configuration's top-level keys.

    >>> detect_job({"kafka": {}, "model": {}})
    'consume'
    >>> detect_job({"model": {}})
    'replay'
    >>> detect_job({"features": []})
    'preprocess'
    >>> detect_job({"serve": {}, "checkpoint": {"uri": "ckpt"}})
    'serve'
    """
    keys = set(data) if isinstance(data, dict) else set()
    if "serve" in keys:
        return "serve"
    if "kafka" in keys:
        return "consume"
    if "model" in keys or "models" in keys:
        return "replay"
    if "features" in keys:
        return "preprocess"
    raise ConfigError("", "cannot tell the job kind (expected a 'serve', 'kafka', 'model' or 'features' section); pass --job")


def register(subparsers) -> None:
    config = subparsers.add_parser("config", help="work with job configuration files")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a configuration file without running anything")
    check.add_argument("file", help="the job's YAML file")
    check.add_argument("--job", choices=sorted(JOB_CONFIGS), help="job kind (default: detected from the keys)")
    check.set_defaults(handler=config_check)


def config_check(args) -> int:
    """Validate a job's file: types, River names and cross-field checks, every mistake at once."""
    job = args.job or detect_job(read_yaml(args.file))
    if job == "replay":  # the replay loader also checks the search: section
        from online.replay.job import load_replay_job

        config, _ = load_replay_job(args.file)
    else:
        config = load_config(args.file, config_class(job))
    checkpoint = getattr(config, "checkpoint", None)
    if checkpoint is not None:
        signed_without_key(checkpoint, args.file)
    if job == "consume" and config.kafka.format != "json":
        from online.formats import check_schema_registry

        try:
            check_schema_registry(config.kafka)
        except ConfigError as error:
            raise error.at(source=args.file) from None
    print(f"{args.file}: valid {job} configuration")
    return 0


def signed_without_key(checkpoint, source: str) -> None:
    """A store whose checkpoints are signed, checked with the key variable unset: refused now, as loading them will be."""
    import os

    from online.checkpoints.store import CheckpointStore, SignatureError

    if os.environ.get(checkpoint.signing_key_env):
        return
    try:
        CheckpointStore(checkpoint.uri).latest_id()  # its pointer is checked as for loading
    except SignatureError:
        raise ConfigError("checkpoint.signing_key_env", f"{checkpoint.signing_key_env} is not set, but the checkpoints at {checkpoint.uri} are signed: set it to their key", source=source) from None
    except Exception:  # unreadable now: the job itself says so
        return
