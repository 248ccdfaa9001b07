"""deploy/ for serving and watching: alert rules (promtool), the Grafana dashboard, the serve manifests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (.ci/run installs Debian's prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def test_alert_rules_are_valid_and_every_alert_passes_its_unit_tests():
    checked = run_promtool("check", "rules", str(DEPLOY / "alerts.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(DEPLOY / "alerts.test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_catches_it_breaking(tmp_path):
    """Make each alert unable to fire, one at a time: its unit test must then fail."""
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    tests = yaml.safe_load((DEPLOY / "alerts.test.yaml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert set(alerts) == tested, set(alerts) ^ tested
    shutil.copy(DEPLOY / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    for name in alerts:
        broken = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
        for group in broken["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == name:
                    rule["expr"] = "vector(1) > 2"
        (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(broken))
        result = run_promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
        assert result.returncode != 0 and name in result.stdout + result.stderr, name


def test_grafana_dashboard_queries_riverbeam_series_through_its_datasource_variable():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] == "riverbeam" and {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job"}
    titles = [p["title"] for p in dashboard["panels"]]
    for wanted in ("Learning curve", "Events per second", "Consumer lag", "Dead-letter", "Checkpoint age", "Serve latency"):
        assert any(t.startswith(wanted) for t in titles), wanted
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert re.search(r"\briverbeam_[a-z_]+\b", target["expr"]) and 'job=~"$job"' in target["expr"], target["expr"]
    # panels tile the 24-column grid without overlapping
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        new = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & new, panel["title"]
        cells |= new
    # every series the dashboard and the rules use is checked against real scrapes in
    # tests/online/serving/test_serve.py (a daemon's and serve's /metrics)


def test_serve_manifests_probe_scale_read_replicas_and_keep_them_available(tmp_path, manifest_bucket):
    from core.configuration import load_config
    from online.config import ServeJobConfig

    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes-serve.yaml").read_text())}
    assert set(documents) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    deployment = documents["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["serve", "--config", "/config/serve.yaml"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" == container["startupProbe"]["httpGet"]["path"]
    assert pod["spec"]["securityContext"]["runAsUser"] != 0 and pod["spec"]["securityContext"]["runAsNonRoot"]
    labels = pod["metadata"]["labels"]
    assert documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert documents["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert documents["Service"]["spec"]["selector"].items() <= labels.items()
    # the mounted configuration validates with the pod's environment; the autoscaled replicas are read-only
    path = tmp_path / "serve.yaml"
    path.write_text(documents["ConfigMap"]["data"]["serve.yaml"])
    environ = {e["name"]: e.get("value", "secret") for e in container["env"]}
    job = load_config(path, ServeJobConfig, environ=environ)
    assert not job.serve.learn and job.serve.host == "0.0.0.0"
    assert job.serve.port == container["ports"][0]["containerPort"] == int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert job.serve.token_env in environ and job.checkpoint.signing_key_env in environ
    assert job.checkpoint.uri == "gs://my-bucket/riverbeam/phishing"
