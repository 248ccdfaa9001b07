"""`riverbeam serve` as users run it: real processes and sockets, the real local broker and a daemon."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from online.checkpoints.store import CheckpointStore
from online.config import EventsConfig, ModelConfig
from online.learning.learner import Learner, probabilities_record
from online.checkpoints.persistence import save_learner
from tests.online.serving_support import ENV, MODEL, PHISHING, Processes, daemon_config, free_port, metric_names, produce, start_serve, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HELD_OUT = [{k: v for k, v in e.items() if k != "label"} for e in PHISHING[1050:1250]]


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.close()


def riverbeam_predict(uri: str, checkpoint_id: str, events: list[dict], env: dict | None = None) -> list[dict]:
    """What `riverbeam predict --checkpoint URI --id ID` prints, without the input line numbers."""
    result = subprocess.run(
        [sys.executable, "-m", "riverbeam.cli", "predict", "--checkpoint", uri, "--id", checkpoint_id],
        input="\n".join(json.dumps(e) for e in events), capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.pop("line") for r in records] == list(range(1, len(events) + 1))
    return records


def learned_locally(events: list[dict], model: dict = MODEL, events_config: dict | None = None) -> Learner:
    learner = Learner(ModelConfig(**model), EventsConfig(**(events_config or {"target": "label"})))
    for event in events:
        learner.process(dict(event))
    return learner


def write_checkpoint(uri: str, events: list[dict], key: bytes | None = None, intruder: bool = False) -> dict:
    """A checkpoint of a model learned from `events`; an `intruder` writes over a pointer it cannot verify."""
    store = CheckpointStore(uri, signing_key=key)
    if intruder:
        store._check_pointer = lambda pointer, verify=True: None
    return save_learner(store, learned_locally(events), positions={})


def latest_manifest(uri: str) -> dict | None:
    store = CheckpointStore(uri)
    newest = store.latest_id()
    return store.manifest(newest) if newest else None


def test_serve_answers_as_riverbeam_predict_while_the_daemon_learns_and_swaps_in_its_next_checkpoint(tmp_path, kafka_bootstrap, topic, processes):
    uri = str(tmp_path / "checkpoints")
    metrics_port = free_port()
    produce(kafka_bootstrap, topic, PHISHING[:600])
    daemon = processes.start(["consume", "--config", daemon_config(tmp_path, kafka_bootstrap, topic, metrics_port)], tmp_path / "daemon.log")
    first = wait_until(lambda: (m := latest_manifest(uri)) and m["events_seen"] == 600 and m, timeout=60, what="the daemon's checkpoint at 600 events")

    _, base, serve_log = start_serve(processes, tmp_path, {"checkpoint": {"uri": uri}, "serve": {"reload_seconds": 0.3}})
    client = httpx.Client(base_url=base, timeout=10)
    assert client.get("/v1/model").json()["checkpoint"]["id"] == first["id"]
    expected = riverbeam_predict(uri, first["id"], HELD_OUT)
    assert client.post("/v1/predict", json=HELD_OUT).json() == expected  # an array, answered at once
    assert [client.post("/v1/predict", json=e).json() for e in HELD_OUT] == expected  # one event per request
    assert {r["checkpoint"] for r in expected} == {first["id"]} and "probabilities" in expected[0]

    # while the daemon learns 450 more events, requests keep being answered through the swap
    answers, stop = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=base, timeout=10) as c:
            while not stop.is_set():
                response = c.post("/v1/predict", json=HELD_OUT[0])
                answers.append((response.status_code, response.json().get("checkpoint")))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        produce(kafka_bootstrap, topic, PHISHING[600:1050])
        last = wait_until(lambda: (m := latest_manifest(uri)) and m["events_seen"] == 1050 and m, timeout=60, what="the daemon's checkpoint at 1050 events")
        wait_until(lambda: client.get("/v1/model").json()["checkpoint"]["id"] == last["id"], timeout=10, what="serve to swap in the new checkpoint")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert answers and all(status == 200 for status, _ in answers), {s for s, _ in answers}
    assert answers[0][1] == first["id"] and answers[-1][1] == last["id"]
    assert client.post("/v1/predict", json=HELD_OUT).json() == riverbeam_predict(uri, last["id"], HELD_OUT)
    model = client.get("/v1/model").json()
    assert model["mode"] == "read-only" and model["report"]["events_learned"] == 1050 and model["checkpoint"]["age_seconds"] >= 0

    # every series the Grafana dashboard and the alert rules use is in a real scrape of the daemon or of serve
    scraped = metric_names(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text) | metric_names(client.get("/metrics").text)
    used = deploy_metric_names()
    assert used and used <= scraped, used - scraped
    reloads = float(re.search(r"^riverbeam_serve_reloads_total (\S+)$", client.get("/metrics").text, re.M).group(1))
    assert reloads >= 2  # the first checkpoint, the last, and any the daemon wrote between them
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0


def deploy_metric_names() -> set[str]:
    """The riverbeam_* names in deploy/grafana-dashboard.json and deploy/alerts.yaml."""
    text = open(os.path.join(ROOT, "deploy", "grafana-dashboard.json")).read() + open(os.path.join(ROOT, "deploy", "alerts.yaml")).read()
    return set(re.findall(r"\briverbeam_[a-z_]+\b", text))


def test_a_checkpoint_failing_verification_is_refused_and_the_old_one_keeps_serving(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    key = b"the signing key"
    good = write_checkpoint(uri, PHISHING[:300], key)
    _, base, serve_log = start_serve(processes, tmp_path, {"checkpoint": {"uri": uri}, "serve": {"reload_seconds": 0.2}}, env={"RIVERBEAM_CHECKPOINT_KEY": key.decode()})
    client = httpx.Client(base_url=base, timeout=10)
    before = client.post("/v1/predict", json=HELD_OUT[:20]).json()

    pointer = (tmp_path / "checkpoints" / "LATEST").read_bytes()
    tampered = write_checkpoint(uri, PHISHING[:600], b"another key", intruder=True)  # LATEST moves to a checkpoint signed with another key
    wait_until(lambda: "riverbeam_serve_reload_failures_total 1.0" in client.get("/metrics").text, timeout=10, what="the refusal to be counted")
    assert client.post("/v1/predict", json=HELD_OUT[:20]).json() == before
    assert client.get("/v1/model").json()["checkpoint"]["id"] == good["id"]
    refusals = [json.loads(line) for line in serve_log.read_text().splitlines() if "refused checkpoint" in line]
    assert refusals and refusals[0]["id"] == tampered["id"] and "wrong signature" in refusals[0]["error"]

    (tmp_path / "checkpoints" / "LATEST").write_bytes(pointer)  # put back (a writer with the key refuses a forged LATEST)
    fixed = write_checkpoint(uri, PHISHING[:900], key)  # the next good one is swapped in
    wait_until(lambda: client.get("/v1/model").json()["checkpoint"]["id"] == fixed["id"], timeout=10, what="the next good checkpoint")
    expected = riverbeam_predict(uri, fixed["id"], HELD_OUT[:20], env={"RIVERBEAM_CHECKPOINT_KEY": key.decode()})
    assert client.post("/v1/predict", json=HELD_OUT[:20]).json() == expected


def test_bearer_token_on_every_route_but_health_and_422_with_the_daemons_reasons(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    write_checkpoint(uri, PHISHING[:300])
    _, base, _ = start_serve(processes, tmp_path, {"checkpoint": {"uri": uri}}, env={"RIVERBEAM_SERVE_TOKEN": TOKEN})
    client = httpx.Client(base_url=base, timeout=10)
    for method, path in [("POST", "/v1/predict"), ("GET", "/v1/model"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/dashboard/history")]:
        assert client.request(method, path, json=HELD_OUT[0]).status_code == 401, path
        assert client.request(method, path, json=HELD_OUT[0], headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert client.request(method, path, json=HELD_OUT[0], headers=AUTH).status_code == 200, path
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    page = client.get("/")  # the dashboard page is static (no data): its data requests carry the token
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "dashboard/history" in page.text

    # bad events: 422 with the reason the learner (and so the daemon's dead-letter record) gives
    bad = [{"empty_server_form_handler": "x"}, {"empty_server_form_handler": None}, {"url_length": [1]}, "text", 3]
    reasons = []
    learner = learned_locally(PHISHING[:10])
    for event in bad:
        with pytest.raises(ValueError) as error:
            learner.process(json.loads(json.dumps(event)))
        reasons.append(str(error.value))
    for event, reason in zip(bad, reasons):
        response = client.post("/v1/predict", json=event, headers=AUTH)
        assert (response.status_code, response.json()) == (422, {"error": reason})
    not_json = client.post("/v1/predict", content=b"{oops", headers=AUTH)
    assert not_json.status_code == 422 and not_json.json()["error"].startswith("not JSON: ")
    mixed = client.post("/v1/predict", json=[HELD_OUT[0], bad[0], HELD_OUT[1], "text"], headers=AUTH).json()
    assert [sorted(r) for r in mixed] == [["checkpoint", "prediction", "probabilities"], ["error"], ["checkpoint", "prediction", "probabilities"], ["error"]]
    assert mixed[1]["error"] == reasons[0] and mixed[3]["error"] == reasons[3]
    assert client.post("/v1/predict", json=[], headers=AUTH).json() == []
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'riverbeam_serve_requests_total{route="/v1/predict",status="422"}' in metrics and "riverbeam_serve_events_rejected_total 8.0" in metrics


def _raw_request(base: str, head: bytes, body: bytes, close: bool = False) -> bytes:
    """Send `head` and part of a body on a raw socket; close it at once (`close`) or read the answer."""
    import socket

    host, port = base.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head + body)
        if close:
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_request_bodies_are_bounded_in_size_and_time_and_an_abandoned_request_is_no_server_error(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    write_checkpoint(uri, PHISHING[:300])
    config = {"checkpoint": {"uri": uri}, "serve": {"max_body_bytes": 1_000_000, "body_timeout_seconds": 1}}
    _, base, log_path = start_serve(processes, tmp_path, config, env={"RIVERBEAM_SERVE_TOKEN": TOKEN})
    client = httpx.Client(base_url=base, timeout=20)
    # the bearer scheme is case-insensitive (RFC 7235)
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert client.post("/v1/predict", json=HELD_OUT[0], headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200, scheme
    assert client.post("/v1/predict", json=HELD_OUT[0], headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    # past max_body_bytes: 413, whether announced (Content-Length) or streamed (chunked)
    big = json.dumps([HELD_OUT[0]] * 20_000).encode()
    assert len(big) > 1_000_000
    announced = client.post("/v1/predict", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert announced.status_code == 413 and "serve.max_body_bytes = 1000000" in announced.json()["error"]
    streamed = client.post("/v1/predict", content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]), headers=AUTH)
    assert streamed.status_code == 413
    # an error answer quotes a bounded part of the input
    huge_value = client.post("/v1/predict", json={**HELD_OUT[0], "url_length": "x" * 500_000}, headers=AUTH)
    assert huge_value.status_code == 422 and len(huge_value.content) < 1000
    assert huge_value.json()["error"].startswith("feature 'url_length' is not a number: 'xxx") and "more characters" in huge_value.json()["error"]
    # a body that does not arrive in time: 408
    head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
    slow = _raw_request(base, head, b'{"url_length": ')
    assert slow.startswith(b"HTTP/1.1 408 ") and b"serve.body_timeout_seconds" in slow
    # a client that leaves mid-body: neither a 500 nor an error traceback in the log
    for _ in range(3):
        _raw_request(base, head, b'{"url_length": 1', close=True)
    counted = 'riverbeam_serve_requests_total{route="/v1/predict",status="499"} 3.0'  # all three: each is counted when the server sees its client gone
    metrics = wait_until(lambda: (text := client.get("/metrics", headers=AUTH).text) and counted in text and text, timeout=10, what="the three abandoned requests to be counted")
    assert counted in metrics
    assert 'status="500"' not in metrics
    assert client.post("/v1/predict", json=HELD_OUT[0], headers=AUTH).status_code == 200
    log = log_path.read_text()
    assert "Traceback" not in log and '"level":"ERROR"' not in log


def learn_config(uri: str, every_events: int = 100, **events) -> dict:
    return {
        "checkpoint": {"uri": uri, "every_events": every_events, "every_seconds": 60, "lease_seconds": 3},
        "serve": {"learn": True},
        "model": MODEL,
        "events": {"target": "label", **events},
    }


def test_learn_with_delayed_labels_equals_the_learners_own_result(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    _, base, _ = start_serve(processes, tmp_path, learn_config(uri, every_events=10_000, id="id"))
    client = httpx.Client(base_url=base, timeout=10)
    # events arrive without their label; labels arrive 50 events later, joined by id; every 7th event comes labelled at once
    stream = []
    for i, event in enumerate(PHISHING[:400]):
        features = {k: v for k, v in event.items() if k != "label"}
        stream.append({**event, "id": i} if i % 7 == 0 else {**features, "id": i})
        if i >= 50 and (i - 50) % 7:
            stream.append({"id": i - 50, "label": PHISHING[i - 50]["label"], **{k: v for k, v in PHISHING[i - 50].items() if k != "label"}})
    learner = Learner(ModelConfig(**MODEL), EventsConfig(target="label", id="id"))
    expected = [learner.process(dict(e)) for e in stream]

    answers = []
    for start in range(0, len(stream), 64):
        answers += client.post("/v1/learn", json=stream[start : start + 64]).json()
    assert [a["learned"] for a in answers] == [p.learned for p in expected]
    assert [a["prediction"] for a in answers] == [p.label() for p in expected]
    assert [a["probabilities"] for a in answers] == [probabilities_record(p.y_pred) for p in expected]
    report = client.get("/v1/model").json()["report"]
    assert report == learner.report() and report["labels_joined"] == 300
    # a bad event in an array fails alone; alone it is a 422 with the learner's reason
    mixed = client.post("/v1/learn", json=[{"id": 9999, "label": True, "url_length": "long"}, {**PHISHING[500], "id": 10_000}]).json()
    assert mixed[0] == {"error": "feature 'url_length' is not a number: 'long'"} and mixed[1]["learned"] is True
    single = client.post("/v1/learn", json={"id": 10_001, "url_length": None})
    assert single.status_code == 422 and single.json() == {"error": "feature 'url_length' is null"}


def test_kill_9_of_a_learning_server_loses_nothing_checkpointed_and_resumes(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    config = learn_config(uri, every_events=100)
    server, base, log_path = start_serve(processes, tmp_path, config)
    client = httpx.Client(base_url=base, timeout=10)
    # a second learning server on the same checkpoints waits as standby: it does not learn beside the first
    standby, standby_base, _ = start_serve(processes, tmp_path, config, ready=False)
    assert httpx.get(standby_base + "/readyz").status_code == 503
    assert httpx.post(standby_base + "/v1/learn", json=PHISHING[0]).status_code == 503

    for start in (0, 100, 200):
        assert all(r["learned"] for r in client.post("/v1/learn", json=PHISHING[start : start + 100]).json())
    client.post("/v1/learn", json=PHISHING[300:350])  # learned, not yet checkpointed
    durable = wait_until(lambda: (m := latest_manifest(uri)) and m["events_learned"] == 300 and m, timeout=20, what="the checkpoint at 300 events")
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)

    # the standby takes the lease when it expires, resumes from the last checkpoint, and goes on
    wait_until(lambda: httpx.get(standby_base + "/readyz").status_code == 200, timeout=30, what="the standby to take over")
    resumed = httpx.Client(base_url=standby_base, timeout=10)
    model = resumed.get("/v1/model").json()
    assert model["checkpoint"]["id"] == durable["id"] and model["report"]["events_learned"] == 300
    assert resumed.post("/v1/predict", json=HELD_OUT).json() == riverbeam_predict(uri, durable["id"], HELD_OUT)
    resumed.post("/v1/learn", json=PHISHING[300:400])
    assert resumed.get("/v1/model").json()["report"] == learned_locally(PHISHING[:400]).report()
    standby.send_signal(signal.SIGTERM)  # a graceful stop writes a final checkpoint
    assert standby.wait(timeout=30) == 0
    assert latest_manifest(uri)["events_learned"] == 400


def test_a_learning_server_fenced_by_another_writer_stops_learning_and_keeps_answering(tmp_path, processes):
    uri = str(tmp_path / "checkpoints")
    _, base, log_path = start_serve(processes, tmp_path, learn_config(uri, every_events=10))
    client = httpx.Client(base_url=base, timeout=10)
    client.post("/v1/learn", json=PHISHING[:10])
    wait_until(lambda: (m := latest_manifest(uri)) and m["events_learned"] == 10, timeout=10, what="the first checkpoint")
    intruder = write_checkpoint(uri, PHISHING[:500])  # another writer moves LATEST (without the lease)
    client.post("/v1/learn", json=PHISHING[10:20])  # this checkpoint is fenced: the server must not overwrite it
    wait_until(lambda: client.get("/readyz").status_code == 503, timeout=10, what="the fenced server to stop learning")
    assert client.post("/v1/learn", json=PHISHING[20:30]).status_code == 503
    assert client.post("/v1/predict", json=HELD_OUT[0]).status_code == 200
    assert CheckpointStore(uri).latest_id() == intruder["id"]
    assert "stops learning" in log_path.read_text()


def test_a_learning_server_that_lost_its_lease_takes_it_back_when_it_is_free(tmp_path, processes):
    from core.storage import open_store

    uri = str(tmp_path / "checkpoints")
    _, base, log_path = start_serve(processes, tmp_path, learn_config(uri, every_events=10))
    client = httpx.Client(base_url=base, timeout=10)
    assert all(r["learned"] for r in client.post("/v1/learn", json=PHISHING[:100]).json())
    wait_until(lambda: (m := latest_manifest(uri)) and m["events_learned"] == 100, timeout=10, what="the checkpoint at 100 events")
    store = open_store(uri)
    store.write("LEASE", json.dumps({"owner": "another-instance", "expires_at": time.time() + 3}).encode())  # another instance takes it
    wait_until(lambda: client.get("/readyz").status_code == 503, timeout=10, what="the server to notice it lost the lease")
    assert client.post("/v1/learn", json=PHISHING[100:110]).status_code == 503
    store.write("LEASE", json.dumps({"owner": None, "expires_at": 0}).encode())  # ... and releases it
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20, what="the server to take the lease back")
    assert json.loads(store.read("LEASE"))["owner"] not in (None, "another-instance")
    assert all(r["learned"] for r in client.post("/v1/learn", json=PHISHING[100:200]).json())
    assert client.get("/v1/model").json()["report"] == learned_locally(PHISHING[:200]).report()
    assert "lost the lease" in log_path.read_text()


def test_a_learning_server_holds_its_lease_through_the_daemons_lease_keeper(tmp_path):
    """One lease loop: from the moment the writer takes the lease, a `LeaseKeeper` renews it on its own thread
    (nobody has to call the writer for it: a long restore or a busy event loop never lets it lapse);
    once another instance holds it, the writer stops learning at its next look."""
    from core.configuration import parse_config
    from core.storage import open_store
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import ModelSlot
    from online.serving.writer import LearningWriter, ServeJobConfig

    uri = str(tmp_path / "checkpoints")
    writer = LearningWriter(parse_config(learn_config(uri), ServeJobConfig, environ={}), ServeMetrics(), ModelSlot())
    assert writer.start()
    try:
        store = open_store(uri)
        taken = json.loads(store.read("LEASE"))
        assert taken["owner"] == writer.lease.owner
        wait_until(lambda: json.loads(store.read("LEASE"))["expires_at"] > taken["expires_at"], timeout=10, what="a renewal nobody asked for")
        writer.check_lease()
        assert writer.active
        store.write("LEASE", json.dumps({"owner": "another-instance", "expires_at": time.time() + 30}).encode())
        wait_until(lambda: writer.keeper.lost.is_set(), timeout=10, what="the keeper to find another owner")
        writer.check_lease()
        assert not writer.active
    finally:
        writer.stop()
    assert json.loads(store.read("LEASE"))["owner"] == "another-instance"  # released only if still ours


def test_a_learning_servers_checkpoints_count_what_every_serving_writer_learned(tmp_path):
    """The learning unit's position (``serve``) is the events learned through serve since the model began: a
    restarted writer continues the count from its checkpoint, never restarts it at 0 over it."""
    from core.configuration import parse_config
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import ModelSlot
    from online.serving.writer import LearningWriter, ServeJobConfig

    uri = str(tmp_path / "checkpoints")
    for first, count in ((0, 30), (30, 20)):
        writer = LearningWriter(parse_config(learn_config(uri, every_events=1000), ServeJobConfig, environ={}), ServeMetrics(), ModelSlot())
        assert writer.start()
        try:
            assert all(r["learned"] for r in writer.learn(PHISHING[first : first + count]))
        finally:
            writer.stop()
        manifest = latest_manifest(uri)
        assert (manifest["positions"]["serve"], manifest["events_learned"]) == (first + count, first + count)


def test_a_learning_request_the_unit_could_not_finish_answers_an_error_per_event(tmp_path):
    """A failure inside the unit's step (here the look-up of a new key's model, which reads the other units
    from storage) stops learning; every event of the request still gets an answer, never a server error."""
    from core.configuration import parse_config
    from online.serving.metrics import ServeMetrics
    from online.serving.reload import ModelSlot
    from online.serving.writer import LearningWriter, ServeJobConfig

    uri = str(tmp_path / "checkpoints")
    writer = LearningWriter(parse_config(learn_config(uri, every_events=1000, key="age_of_domain"), ServeJobConfig, environ={}), ServeMetrics(), ModelSlot())
    assert writer.start()
    try:
        def broken(key):
            raise OSError("the store is unreachable")

        writer.unit.learner._model_for = broken  # the look-up of a key's model fails (storage behind OtherUnits)
        answers = writer.learn(PHISHING[:3])
        assert [sorted(a) for a in answers] == [["error"]] * 3 and all("not learned" in a["error"] for a in answers)
        assert not writer.active
    finally:
        writer.stop()


def test_a_wrong_serve_configuration_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"checkpoint": {"uri": str(tmp_path)}, "serve": {"learn": True, "port": "http"}}))
    result = subprocess.run([sys.executable, "-m", "riverbeam.cli", "serve", "--config", str(path)], capture_output=True, text=True, env=ENV, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "serve.port: expected an integer" in result.stderr


# -- the OpenAPI document, checked by a property-based API tester ------------------------------


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """A learning server (so /v1/learn is in the document) with auth on, and its schema."""
    schemathesis = pytest.importorskip("schemathesis")
    tmp_path = tmp_path_factory.mktemp("api")
    uri = str(tmp_path / "checkpoints")
    write_checkpoint(uri, PHISHING[:200])
    started = Processes()
    try:
        _, base, _ = start_serve(started, tmp_path, learn_config(uri, every_events=50), env={"RIVERBEAM_SERVE_TOKEN": TOKEN})
        yield schemathesis.openapi.from_url(base + "/openapi.json", headers=AUTH)
    finally:
        started.close()


def test_openapi_operations_never_answer_a_server_error(api_schema):
    """Every documented operation, with generated bodies and parameters: never a 5xx, only documented statuses.

    Driven through schemathesis' public schema API (operations -> Hypothesis strategies), not its
    pytest plugin, whose lazy fixture parametrisation writes pytest's private node fields and broke
    with pytest 9.2.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {(operation.method.upper(), operation.path) for operation in operations} >= {("POST", "/v1/predict"), ("POST", "/v1/learn")}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, database=None, phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(headers=AUTH, checks=[not_a_server_error, status_code_conformance], timeout=10)

        check()
