"""Operating Switchboard: the Prometheus alert rules (checked and unit-tested by
promtool), the Grafana dashboard (every metric it and the rules use is one a node
exports), the Kubernetes manifests (validated against the Kubernetes API schemas, and the
pods' start script run for real), the container recipe, `switchboard probe` (its health
check) and `--advertise` (how pods name themselves to each other)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

from conftest import BIN, CLUSTER_SECRET, Node, up_members, wait_until

DEPLOY = os.path.join(os.path.dirname(__file__), "../../deploy")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def run(*args, cwd=None, env=None):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_the_alert_rules_pass_promtool_and_their_unit_tests():
    rules = os.path.join(DEPLOY, "prometheus")
    check = run(PROMTOOL, "check", "rules", "switchboard-alerts.yml", cwd=rules)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 13 rules found" in check.stdout
    tests = run(PROMTOOL, "test", "rules", "switchboard-alerts.test.yml", cwd=rules)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # Every rule is exercised by the unit tests.
    with open(os.path.join(rules, "switchboard-alerts.yml")) as f:
        names = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]}
    with open(os.path.join(rules, "switchboard-alerts.test.yml")) as f:
        tested = {t["alertname"] for case in yaml.safe_load(f)["tests"] for t in case["alert_rule_test"]}
    assert names == tested, f"rules without a test: {names - tested}"


def metric_names(text):
    """The switchboard_* and process_* metric names a PromQL text uses (histogram
    suffixes taken off)."""
    names = set(re.findall(r"\b((?:switchboard|process)_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_the_dashboard_and_the_rules_use_only_metrics_a_node_exports(start_cluster):
    with open(os.path.join(DEPLOY, "grafana/switchboard-dashboard.json")) as f:
        dashboard = json.load(f)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 30 and all(exprs)
    with open(os.path.join(DEPLOY, "prometheus/switchboard-alerts.yml")) as f:
        rules = yaml.safe_load(f)
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = metric_names("\n".join(exprs + rule_exprs))
    # Two nodes, so that the per-peer metrics have rows too; a backend (never called
    # here), so that the bridge's metrics have theirs.
    a, _ = start_cluster(2, "--backend-url", "http://127.0.0.1:9/switchboard/", "--backend-secret", "k")
    status, text = Node.http(a.admin, "/metrics")
    assert status == 200
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    missing = used - exported
    assert not missing, f"used but not exported: {sorted(missing)}"


def test_the_kubernetes_manifests_validate_against_the_api_schemas():
    manifests = os.path.join(DEPLOY, "kubernetes")
    files = sorted(os.path.join(manifests, f) for f in os.listdir(manifests)
                   if f.endswith(".yaml") and f != "kustomization.yaml")
    validate = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    out = run(validate, "--strict", *files)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(os.path.join(manifests, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f)["resources"])
    assert listed == {"services.yaml", "statefulset.yaml", "pdb.yaml"}
    with open(os.path.join(manifests, "statefulset.yaml")) as f:
        sts = yaml.safe_load(f)
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][:2] == ["switchboard", "drain"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_the_pods_start_script_gives_stable_ids_seeds_and_names():
    """The StatefulSet's start script, run by a real sh with a stand-in `switchboard`
    that prints its arguments: pod N is node N+1, pods after the first seed from pod 0,
    and each advertises its stable DNS name."""
    with open(os.path.join(DEPLOY, "kubernetes/statefulset.yaml")) as f:
        script = yaml.safe_load(f)["spec"]["template"]["spec"]["containers"][0]["args"][0]
    bin_dir = tempfile.mkdtemp(prefix="sb-k8s-")
    with open(os.path.join(bin_dir, "switchboard"), "w") as f:
        f.write('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    os.chmod(os.path.join(bin_dir, "switchboard"), 0o755)
    for pod, node, seeds in [("switchboard-0", "1", ""),
                             ("switchboard-2", "3", "switchboard-0.switchboard-peers.prod.svc.cluster.local:7001")]:
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", POD_NAME=pod, POD_NAMESPACE="prod")
        out = run("/bin/sh", "-c", script, env=env)
        assert out.returncode == 0, out.stderr
        args = out.stdout.split("\n")
        assert args[:5] == ["serve", "--node-id", node, "--seeds", seeds], args
        assert args[5:7] == ["--advertise", f"{pod}.switchboard-peers.prod.svc.cluster.local"]


def test_the_container_recipe_builds_a_non_root_image_with_a_health_check():
    """Checked as text: no container engine runs on this machine (docker is a client
    only) and no image registry is reachable, so the image is not built here."""
    with open(os.path.join(DEPLOY, "container/Containerfile")) as f:
        recipe = f.read()
    stages = re.findall(r"^FROM (\S+)( AS \S+)?", recipe, re.M)
    assert len(stages) == 2 and stages[0][1], "a build stage, then the runtime"
    assert re.search(r"^COPY --from=build .*/switchboard ", recipe, re.M)
    assert re.search(r"^USER 10001:10001$", recipe, re.M), "runs as a non-root user"
    health = re.search(r"^HEALTHCHECK .*\n?.*CMD \[(.*)\]", recipe, re.M)
    assert health and '"probe"' in health.group(1)
    for port in ("8001/tcp", "6379/tcp", "8002/tcp", "7001/udp"):
        assert port in recipe
    # The health check's command exists and works (the binary under test).
    node = Node()
    try:
        ok = run(BIN, "probe", "--addr", node.ws_addr, "--path", "/readyz")
        assert ok.returncode == 0, ok.stderr
        node.cli("drain")
        wait_until(lambda: run(BIN, "probe", "--addr", node.ws_addr).returncode == 1, what="probe failing")
        failed = run(BIN, "probe", "--addr", node.ws_addr)
        assert "503" in failed.stderr
    finally:
        node.stop()


def test_advertised_names_are_what_peers_dial(start_node):
    """Nodes that bind 127.0.0.1 but advertise `localhost` mesh through that name, and
    `members` shows it: as pods do with their DNS names."""
    common = ("--cluster-secret", CLUSTER_SECRET, "--node-timeout-ms", "2000", "--advertise", "localhost")
    a = start_node("--node-id", "1", *common)
    b = start_node("--node-id", "2", "--seeds", f"localhost:{a.peer_addr.rsplit(':', 1)[1]}", *common)
    for n in (a, b):
        wait_until(lambda n=n: up_members(n) == [1, 2], what="the mesh through advertised names")
    members = {m["id"]: m for m in b.cli("members")["members"]}
    assert members[1]["addresses"]["peer"] == f"localhost:{a.peer_addr.rsplit(':', 1)[1]}"
    assert members[1]["addresses"]["ws"].startswith("localhost:")
