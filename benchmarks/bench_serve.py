"""`riverbeam serve` under concurrent load, against River in process and a minimal handler on the same stack.

All in one run, on 127.0.0.1 only, load bounded in time (``--seconds`` per measurement):

* **anchor (in process)**: River's ``predict_proba_one`` on the checkpoint's model, called in a
  loop (no HTTP): the ceiling.
* **minimal handler**: a Starlette app on uvicorn (the stack ``riverbeam serve`` runs on, same
  settings) whose one route decodes the body with orjson, calls ``predict_proba_one`` and encodes
  the answer: what a user writes by hand.
* **riverbeam serve**: the real command (``riverbeam serve --checkpoint``), read-only, with its
  event checks, metrics, hot reload watcher and dashboard history running.

Load generator: Debian's ``wrk`` (``apt-get install wrk``), ``--connections`` concurrent
connections, one thread, POSTing one event or an array of ``--batch`` events. Rounds alternate
minimal / serve and the best of each is kept. Then hot reload: a new checkpoint is written
``--reloads`` times and the time from ``LATEST`` moving to the first answer carrying the new
checkpoint id is measured (it includes up to one ``--reload-seconds`` polling interval).

    python benchmarks/bench_serve.py                      # ~1.5 min on 2 cores
    python benchmarks/bench_serve.py --seconds 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from river import datasets

from online.checkpoints.store import CheckpointStore
from online.config import EventsConfig, ModelConfig
from online.learning.learner import Learner
from online.checkpoints.persistence import restore_learner, save_learner

MODEL = ModelConfig(pipeline=[{"preprocessing.StandardScaler": {}}, {"linear_model.LogisticRegression": {}}], metrics=["Accuracy"])
ROWS = [{**x, "label": y} for x, y in datasets.Phishing()]
EVENT = {k: v for k, v in ROWS[0].items() if k != "label"}

MINIMAL_APP = '''
import sys, orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from online.checkpoints.store import CheckpointStore
from online.checkpoints.persistence import restore_learner

model = restore_learner(CheckpointStore(sys.argv[1]).load_latest()).state.models[None]

async def predict(request):
    events = orjson.loads(await request.body())
    def one(x):
        p = model.predict_proba_one(x)
        return {"prediction": max(p, key=p.get), "probabilities": {str(k): v for k, v in p.items()}}
    body = [one(x) for x in events] if type(events) is list else one(events)
    return Response(orjson.dumps(body), media_type="application/json")

app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}")
        try:
            if httpx.post(url, json=EVENT, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} never answered")


def wrk(url: str, body: bytes, seconds: float, connections: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    (workdir / "body.json").write_bytes(body)
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{workdir / "body.json"}", "rb"); wrk.body = f:read("*all"); f:close()\n'
        'done = function(summary, latency, requests)\n'
        '  io.write(string.format("JSON {\\"requests\\": %d, \\"errors\\": %d, \\"non2xx\\": %d}\\n", summary.requests,\n'
        '    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status))\n'
        'end\n'
    )  # fmt: skip
    run = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    out = run.stdout
    found = re.search(r"JSON (\{.*\})", out)
    if found is None:
        raise SystemExit(f"wrk failed on {url}: {out[-1000:]} {run.stderr[-1000:]}")
    counts = json.loads(found.group(1))

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"), **counts}


def in_process(model, events: list[dict], seconds: float) -> float:
    """predict_proba_one calls per second, in a loop, for about `seconds`."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for x in events:
            model.predict_proba_one(x)
        done += len(events)
    return done / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--reload-seconds", type=float, default=0.25)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    uri = str(workdir / "checkpoints")
    learner = Learner(MODEL, EventsConfig(target="label"))
    for row in ROWS:
        learner.process(dict(row))
    save_learner(CheckpointStore(uri), learner, positions={})
    model = restore_learner(CheckpointStore(uri).load_latest()).state.models[None]
    events = [{k: v for k, v in r.items() if k != "label"} for r in ROWS[: args.batch]]
    single, batch = orjson.dumps(EVENT), orjson.dumps(events)

    env = dict(os.environ, NO_GCE_CHECK="true")
    (workdir / "minimal.py").write_text(MINIMAL_APP)
    minimal_port, serve_port = free_port(), free_port()
    (workdir / "serve.yaml").write_text(json.dumps({"checkpoint": {"uri": uri}, "serve": {"reload_seconds": args.reload_seconds}}))
    servers = {
        "minimal": subprocess.Popen([sys.executable, str(workdir / "minimal.py"), uri, str(minimal_port)], env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}),
        "serve": subprocess.Popen([sys.executable, "-m", "riverbeam.cli", "serve", "--config", str(workdir / "serve.yaml"), "--port", str(serve_port)],
                                  env=env, stderr=open(workdir / "serve.log", "w")),
    }  # fmt: skip
    urls = {"minimal": f"http://127.0.0.1:{minimal_port}/v1/predict", "serve": f"http://127.0.0.1:{serve_port}/v1/predict"}
    try:
        for name, process in servers.items():
            wait_up(urls[name], process)
        anchor = max(in_process(model, events, min(2.0, args.seconds)) for _ in range(args.rounds))
        best: dict = {}
        for _ in range(args.rounds):
            for name in ("minimal", "serve"):
                for shape, body in (("single", single), ("batch", batch)):
                    result = wrk(urls[name], body, args.seconds, args.connections, workdir)
                    result["events_per_s"] = result["rps"] * (args.batch if shape == "batch" else 1)
                    if result["non2xx"] or result["errors"]:
                        print(f"warning: {name} {shape}: {result['non2xx']} non-2xx, {result['errors']} socket errors", file=sys.stderr)
                    key = (name, shape)
                    if key not in best or result["events_per_s"] > best[key]["events_per_s"]:
                        best[key] = result

        # hot reload: LATEST moves -> first answer from the new checkpoint
        reloads = []
        with httpx.Client(timeout=5) as client:
            for i in range(args.reloads):
                learner.process(dict(ROWS[i]))
                manifest = save_learner(CheckpointStore(uri), learner, positions={})
                moved = time.perf_counter()
                while client.post(urls["serve"], content=single, headers={"Content-Type": "application/json"}).json()["checkpoint"] != manifest["id"]:
                    if time.perf_counter() - moved > 30:
                        raise SystemExit("serve never swapped in the new checkpoint")
                reloads.append(time.perf_counter() - moved)
    finally:
        for process in servers.values():
            process.terminate()
        for process in servers.values():
            process.wait(timeout=30)

    print(f"anchor: River predict_proba_one in process: {anchor:,.0f} events/s")
    print(f"load: wrk, 1 thread, {args.connections} connections, {args.seconds:g} s per run, best of {args.rounds}; 127.0.0.1")
    print(f"{'server':<16}{'body':<12}{'req/s':>10}{'events/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs anchor':>11}")
    for (name, shape), r in best.items():
        body = "1 event" if shape == "single" else f"{args.batch} events"
        print(f"{name:<16}{body:<12}{r['rps']:>10,.0f}{r['events_per_s']:>12,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['events_per_s'] / anchor:>10.2f}x")
    s_single, m_single = best[("serve", "single")], best[("minimal", "single")]
    print(f"serve / minimal handler, single events: {s_single['rps'] / m_single['rps']:.2f}x (aim >= 0.8)")
    print(f"serve / minimal handler, arrays of {args.batch}: {best[('serve', 'batch')]['events_per_s'] / best[('minimal', 'batch')]['events_per_s']:.2f}x")
    print(f"serve arrays of {args.batch} / serve single, events/s: {best[('serve', 'batch')]['events_per_s'] / s_single['events_per_s']:.1f}x (aim >= 5)")
    print(f"hot reload (LATEST moved -> first answer from it; polling every {args.reload_seconds:g} s): "
          f"median {statistics.median(reloads) * 1000:.0f} ms, max {max(reloads) * 1000:.0f} ms over {len(reloads)}")  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
