"""``riverbeam models list``: the River names usable in a model specification."""

from __future__ import annotations


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="what a model specification can use")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list River estimators, optimizers, metrics and drift detectors a model spec can build")
    listing.add_argument("--kind", choices=["estimators", "optimizers", "metrics", "drift", "other"], help="only this kind")
    listing.set_defaults(handler=models_list)


def models_list(args) -> int:
    from online.models import list_models, spec_form

    for kind, names in list_models().items():
        if args.kind and kind != args.kind:
            continue
        print(f"{kind}:")
        for name in names:
            print(f"  {name if kind == 'metrics' else spec_form(name)}")
    return 0
