"""``riverbeam config check FILE``: validate a job's configuration without running anything."""

from __future__ import annotations

from core.configuration import load_config, read_yaml
from core.errors import ConfigError


def register(subparsers) -> None:
    config = subparsers.add_parser("config", help="work with job configuration files")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a configuration file without running anything")
    check.add_argument("file", help="the job's YAML file")
    check.add_argument("--job", help="job kind: consume, replay, preprocess or serve (default: detected from the keys)")
    check.add_argument("--online", action="store_true", help="also ask the services the file names: the schema registry's subjects of the source topics exist")
    check.set_defaults(handler=config_check)


def config_check(args) -> int:
    """Validate a job's file: types, River names and cross-field checks, every mistake at once."""
    from online.config import detect_job, job_config_class  # not at start-up: riverbeam --help stays light

    job = args.job or detect_job(read_yaml(args.file))
    config_class = job_config_class(job)  # an unknown --job: one line, exit 2
    if job == "replay":  # the replay loader also checks the search: section
        from online.replay.job import load_replay_job

        config, _ = load_replay_job(args.file)
    else:
        config = load_config(args.file, config_class)
    checkpoint = getattr(config, "checkpoint", None)
    if checkpoint is not None:
        signed_without_key(checkpoint, args.file)
    if job == "consume":  # a registry format read or written: the registry answers (online.formats)
        from online.formats import check_schema_registry
        from online.formats_write import check_output_subjects

        try:
            check_schema_registry(config.kafka, subjects=args.online)
            if args.online:
                check_output_subjects(config.kafka)  # the outputs' subjects, when they are not registered by the daemon
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
