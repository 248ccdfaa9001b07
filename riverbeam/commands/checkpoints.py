"""``riverbeam checkpoints list|show URI``: what a checkpoint store holds.

Commands that read checkpoints without a ``checkpoint:`` section (this one, ``predict``,
``replay --checkpoint-uri``) verify signatures with the key in the environment variable named by
``--signing-key-env`` (`add_signing_key_env`), ``RIVERBEAM_CHECKPOINT_KEY`` by default. ``list``
reads manifests only (nothing is unpickled or verified) and marks each ``signed``, ``unsigned`` or
``signed-before-manifest-signing`` (refused by every reader); ``show`` loads and verifies. At the URI
of per-key models (the units of `online.checkpoints.units`), ``list`` lists every unit's checkpoints
and ``show`` names the units to show.
"""

from __future__ import annotations

import json

from core.summary import format_metric


def register(subparsers) -> None:
    checkpoints = subparsers.add_parser("checkpoints", help="inspect checkpoints (local path, file://, gs:// or s3://)")
    actions = checkpoints.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list the checkpoints kept, newest first")
    listing.add_argument("uri")
    add_signing_key_env(listing)
    listing.add_argument("--json", action="store_true", help="print JSON: a list with one object per checkpoint, newest first")
    listing.set_defaults(handler=checkpoints_list)
    show = actions.add_parser("show", help="show one checkpoint (default: the latest good one)")
    show.add_argument("uri")
    add_signing_key_env(show)
    show.add_argument("--id", help="checkpoint id (default: latest)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=checkpoints_show)


def add_signing_key_env(parser) -> None:
    """The ``--signing-key-env NAME`` flag of every command that reads checkpoints without a configuration."""
    parser.add_argument(
        "--signing-key-env", metavar="NAME", default=None,
        help="environment variable holding the checkpoint signing key (default RIVERBEAM_CHECKPOINT_KEY); "
        "when it is set, unsigned or wrongly signed checkpoints are refused",
    )


def _store(args):
    from online.checkpoints.persistence import checkpoint_store

    return checkpoint_store(args.uri, args.signing_key_env)


def _units(args, store) -> list[tuple[str, object]]:
    """Per-key models: the units of the keyed layout below the URI, with their stores (`online.checkpoints.units`)."""
    from online.checkpoints.units import unit_store, units_of

    return [(unit, unit_store(store, unit)) for unit in units_of(args.uri)]


def checkpoints_list(args) -> int:
    """List the checkpoints at the URI, newest first; at a keyed URI, those of each unit (prefixed ``unit=``)."""
    store = _store(args)
    manifests = [(None, manifest) for manifest in store.list()]
    if not manifests:
        manifests = [(unit, manifest) for unit, unit_store in _units(args, store) for manifest in unit_store.list()]
    if not manifests and not args.json:
        print(f"no checkpoints at {args.uri}")
        return 0
    rows = []  # --json
    for unit, manifest in manifests:
        headline = next(iter(manifest.get("metrics", {}).items()), ("-", None))
        signed = "signed" if manifest.get("signature") else "signed-before-manifest-signing" if (manifest.get("state") or {}).get("hmac_sha256") else "unsigned"
        if args.json:
            rows.append({key: manifest.get(key) for key in ("id", "created_at", "events_seen", "events_learned", "metrics")} | {"signature": signed}
                        | ({"unit": unit} if unit is not None else {}))
            continue
        where = f"unit={unit}  " if unit is not None else ""
        print(f"{where}{manifest['id']}  {manifest['created_at']}  events_seen={manifest['events_seen']}  {headline[0]}={format_metric(headline[1])}  {signed}")
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    return 0


def checkpoint_summary(manifest: dict) -> dict:
    """The documented JSON view of a checkpoint."""
    return {
        "id": manifest["id"],
        "created_at": manifest["created_at"],
        "events_seen": manifest["events_seen"],
        "events_learned": manifest["events_learned"],
        "positions": manifest["positions"],
        "metrics": manifest["metrics"],
        "model": manifest["model"],
        "config_hash": manifest.get("config_hash"),
        "versions": manifest.get("versions"),
        "report": manifest.get("extra", {}).get("report"),
        "leaderboard": leaderboard_of(manifest),
    }


def leaderboard_of(manifest: dict) -> list[dict] | None:
    """A checkpoint of several models (``models:``): its models ranked by the headline metric; else None."""
    from online.learning.leaderboard import leaderboard, recorded_headline

    extra = manifest.get("extra", {})
    models = (extra.get("report") or {}).get("by_model")
    learning = extra.get("learning") or {}
    if not (isinstance(models, dict) and models and learning.get("models")):  # not a set's checkpoint (or no recorded configuration to rank by)
        return None
    return leaderboard(models, recorded_headline(learning))


def checkpoints_show(args) -> int:
    from core.errors import RiverbeamError

    store = _store(args)
    checkpoint = store.load(args.id) if args.id else store.load_latest()
    if checkpoint is None:
        units = [unit for unit, _ in _units(args, store)]
        if units:
            from online.checkpoints.units import unit_uri

            raise RiverbeamError(f"{args.uri} holds per-key models in {len(units)} units ({', '.join(units[:3])}{', …' if len(units) > 3 else ''}): "
                                 f"show one with riverbeam checkpoints show {unit_uri(args.uri, units[0])}")
        raise RiverbeamError(f"no checkpoints at {args.uri}")
    summary = checkpoint_summary(checkpoint.manifest)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for key in ("id", "created_at", "events_seen", "events_learned"):
            print(f"{key}: {summary[key]}")
        print("positions: " + json.dumps(summary["positions"]))
        print("metrics: " + ", ".join(f"{k}={format_metric(v)}" for k, v in summary["metrics"].items()))
        if summary["leaderboard"]:
            print("leaderboard:")
            for row in summary["leaderboard"]:
                print(f"  {row['rank']}. {row['model']}: " + ", ".join(f"{k}={format_metric(v)}" for k, v in row["metrics"].items()))
        print("model:\n" + summary["model"])
    return 0
