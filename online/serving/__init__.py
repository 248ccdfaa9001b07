"""``riverbeam serve``: HTTP predictions (and optional learning) from checkpoints, with hot reload and a live dashboard.

`config` (the ``serve.yaml`` sections), `metrics` (Prometheus series), `reload` (the served
model and the checkpoint watcher), `writer` (the learning instance: lease and checkpoint
cadence), `app` (the ASGI application). ``dashboard.html`` is the live page served at ``/`` here
and by the daemon's metrics port.
"""
