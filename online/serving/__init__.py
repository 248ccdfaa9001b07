"""Serving: predictions from checkpoints, over HTTP (``riverbeam serve``) and over files (``riverbeam predict``).

Owns `predict` (predictions of a checkpoint's model for each event of files, without learning),
`metrics` (Prometheus series), `reload` (the served
model and the checkpoint watcher), `writer` (the learning instance: its lease, and the learning unit each
``/v1/learn`` request is pushed into), `app` (the ASGI application). ``dashboard.html`` is the live page served at ``/`` here
and by the daemon's metrics port. May import the base of `online`, `learning` and
`checkpoints`; never consume or replay.
"""
