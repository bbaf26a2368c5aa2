#!/usr/bin/env python3
"""Consistency checks of deploy/ that no schema tool sees: the files refer to
each other (names, ports, paths, timeouts) and must agree.

Run from anywhere: python3 deploy/check_manifests.py  (needs PyYAML).
Prints one line per failed check and exits 1 if any failed. fusebox's own
validation of the embedded configs is `fusebox check` (see deploy/check.sh).
"""

import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


def seconds(duration):
    """A fusebox duration string (`500ms`, `30s`, `2m`, `1h`) in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration).strip())
    if not m:
        raise ValueError(f"cannot read duration {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(listen):
    return int(str(listen).rsplit(":", 1)[1])


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_fusebox_config(cfg, where):
    """What a container deployment of fusebox needs from its config."""
    admin = cfg.get("admin", {}).get("listen", "127.0.0.1:9901")
    check(not admin.startswith(("127.", "localhost", "[::1]")),
          f"{where}: admin.listen {admin} is loopback: probes and Prometheus cannot reach it")
    routes = cfg.get("routes", [])
    check(routes, f"{where}: no routes")
    for route in routes:
        check(route.get("upstream") in cfg.get("upstreams", {}),
              f"{where}: route {route} names an unknown upstream")
    return cfg


# --- every YAML file parses ---------------------------------------------------
docs = {}
for path in sorted(list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml"))):
    try:
        docs[path.relative_to(DEPLOY).as_posix()] = load_all(path)
    except yaml.YAMLError as e:
        errors.append(f"{path}: {e}")
if errors:
    print("\n".join(errors))
    sys.exit(1)

# --- rules: the PrometheusRule carries exactly alerts.yml -----------------------
alerts = docs["prometheus/alerts.yml"][0]
prom_rule = docs["kubernetes/prometheus-operator/prometheusrule.yaml"][0]
check(prom_rule["spec"]["groups"] == alerts["groups"],
      "kubernetes/prometheus-operator/prometheusrule.yaml spec.groups differ from prometheus/alerts.yml groups")
alert_exprs = {r["alert"]: " ".join(r["expr"].split()) for g in alerts["groups"] for r in g["rules"] if "alert" in r}
alert_for = {r["alert"]: r.get("for") for g in alerts["groups"] for r in g["rules"] if "alert" in r}
# What the alerts must cover (the product contract), by the series they read.
for needle, what in [
    ('fusebox_circuit_state{state=~"open|half-open"}', "an open circuit"),
    ("fusebox_endpoint_ejected == 1", "an ejected endpoint"),
    ("fusebox_endpoint_ejections_total", "the ejection rate"),
    ("fusebox_config_last_reload_successful == 0", "a failing config reload"),
    ("increase(fusebox_store_write_errors_total[10m]) > 0", "store write errors"),
    ('fusebox_operation_circuit_state{state=~"open|half-open"}', "an open operation circuit"),
    ('up{job="fusebox"} == 0', "a fusebox target down (the job every shipped scrape uses)"),
]:
    check(any(needle in e for e in alert_exprs.values()), f"prometheus/alerts.yml: no alert on {what} ({needle})")
check(alert_for.get("FuseboxCircuitOpen") == "1m", "FuseboxCircuitOpen must wait `for: 1m`")
# Every alert links its runbook, a section of docs/runbooks.md (GitHub-style
# anchors: the heading lowercased).
runbooks = (ROOT / "docs" / "runbooks.md").read_text(encoding="utf-8")
anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", runbooks, re.M)}
for g in alerts["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        url = r.get("annotations", {}).get("runbook_url", "")
        m = re.fullmatch(r"https://\S+/docs/runbooks\.md#([a-z0-9-]+)", url)
        check(m is not None, f"alert {r['alert']}: runbook_url {url!r} does not point into docs/runbooks.md")
        check(m is None or m.group(1) in anchors, f"alert {r['alert']}: docs/runbooks.md has no section #{m.group(1) if m else ''}")
        check(m is None or m.group(1) == r["alert"].lower(), f"alert {r['alert']}: runbook anchor is not #{r['alert'].lower()}")
# The shipped scrape jobs are all named `fusebox` (FuseboxDown matches it).
compose_jobs = [j["job_name"] for j in docs["compose/prometheus.yml"][0]["scrape_configs"]]
check("fusebox" in compose_jobs, f"compose/prometheus.yml has no job `fusebox`: {compose_jobs}")
podmon = docs["kubernetes/prometheus-operator/podmonitor.yaml"][0]
relabels = [r for ep in podmon["spec"]["podMetricsEndpoints"] for r in ep.get("relabelings", []) if r.get("targetLabel") == "job"]
check(relabels and relabels[-1].get("replacement") == "fusebox", "the PodMonitor does not name its job `fusebox`")
check(alert_for.get("FuseboxEndpointEjected") == "5m", "FuseboxEndpointEjected must wait `for: 5m`")

# --- kubernetes: the base is what `kubectl apply -k deploy/kubernetes` applies ---
# (its kustomization.yaml lists the top-level files). The opt-in directories
# below it are applied on purpose, one by one. kustomization.yaml files, the component and its example are not applied
# with `kubectl apply -f`: deploy/check.sh renders them with
# `kubectl kustomize` and check_rendered.py checks the result.
BASE = "kubernetes/"
OPT_IN = {"kubernetes/admin-exposed/", "kubernetes/prometheus-operator/"}
KUSTOMIZE_ONLY = ("kubernetes/components/", "kubernetes/examples/")
base_objs, optin_objs = [], []
for name, objs in docs.items():
    if not name.startswith(BASE) or name.startswith(KUSTOMIZE_ONLY) or name.endswith("/kustomization.yaml"):
        continue
    rest = name[len(BASE):]
    if "/" not in rest:
        base_objs += [(name, o) for o in objs]
    else:
        folder = BASE + rest.rsplit("/", 1)[0] + "/"
        check(folder in OPT_IN, f"{name}: unknown kubernetes/ subdirectory {folder} (document it and add it to OPT_IN)")
        optin_objs += [(name, o) for o in objs]
k8s = {(o["kind"], o["metadata"]["name"]): o for _, o in base_objs}
optin = {(o["kind"], o["metadata"]["name"]): o for _, o in optin_objs}
for (kind, name), _ in k8s.items():
    check((kind, name) not in optin, f"{kind} {name} is both in the base and in an opt-in directory")

kustomization = docs.get("kubernetes/kustomization.yaml", [{}])[0]
top_files = {n[len(BASE):] for n in docs if n.startswith(BASE) and "/" not in n[len(BASE):] and not n.endswith("/kustomization.yaml")}
check(set(kustomization.get("resources", [])) == top_files,
      f"kubernetes/kustomization.yaml resources {sorted(kustomization.get('resources', []))} != the base files {sorted(top_files)}")
for (kind, name), obj in {**k8s, **optin}.items():
    got = obj["metadata"].get("labels", {})
    for label in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"):
        check(label in got, f"{kind} {name}: no {label} label")

deployment = next(o for (kind, _), o in k8s.items() if kind == "Deployment")
pod = deployment["spec"]["template"]
spec = pod["spec"]
# The native sidecar form: fusebox is an init container that keeps running.
init_fusebox = [c for c in spec.get("initContainers", []) if c["name"] == "fusebox"]
check(len(init_fusebox) == 1 and init_fusebox[0].get("restartPolicy") == "Always",
      "deployment: fusebox is not a native sidecar (initContainers, restartPolicy: Always)")
fusebox = next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "fusebox")
check("startupProbe" in fusebox and fusebox["startupProbe"]["httpGet"]["path"] == "/livez",
      "deployment: the sidecar's startupProbe must be /livez (readyz waits for the app, which starts after it)")
for c in spec["containers"]:
    check("readinessProbe" in c, f"deployment: container {c['name']} has no readiness probe of its own")
ports = {p["name"]: p["containerPort"] for p in fusebox["ports"]}
admin_port_ids = {"admin", ports["admin"]}
volumes = {v["name"]: v for v in spec["volumes"]}
mounts = {m["mountPath"]: m for m in fusebox["volumeMounts"]}
labels = pod["metadata"]["labels"]


def selects_pod(selector):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


# Safe by default 1: no Secret in the base at all (so no known key is ever
# installed by applying it), and none with a literal key anywhere in deploy/.
for (kind, name), obj in {**k8s, **optin}.items():
    if kind == "Secret":
        check(False, f"Secret {name} is in kubernetes/: the JWT key is created by the operator "
                     "(kubectl create secret generic ... --from-file), never shipped")
for path in DEPLOY.rglob("*"):
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        text = path.read_text(encoding="utf-8")
        check(not re.search(r"^\s*kind:\s*Secret\s*$", text, re.M),
              f"{path.relative_to(DEPLOY)}: a Secret manifest (with a key everybody can read)")

# Safe by default 2: the admin port is in no base Service, and the base
# NetworkPolicy admits it only from a labelled namespace or labelled pods.
for (kind, name), svc in k8s.items():
    if kind != "Service":
        continue
    check(selects_pod(svc["spec"].get("selector")), f"Service {name} selector does not match the pod labels")
    for p in svc["spec"]["ports"]:
        check(p["targetPort"] in ports or p["targetPort"] in ports.values(),
              f"Service {name} port {p['name']} targets {p['targetPort']}, not a fusebox container port")
        check(p["targetPort"] not in admin_port_ids and p.get("port") != ports["admin"] and p.get("name") != "admin",
              f"Service {name} (base) exposes the admin port: only admin-exposed/ may")
policies = [o for (kind, _), o in k8s.items() if kind == "NetworkPolicy" and selects_pod(o["spec"]["podSelector"].get("matchLabels"))]
check(policies, "no base NetworkPolicy selects the app's pods: the admin port would be open to the cluster")
for pol in policies:
    for rule in pol["spec"].get("ingress", []):
        rule_ports = {p.get("port") for p in rule.get("ports", [])}
        if not rule.get("ports") or rule_ports & admin_port_ids:
            froms = rule.get("from", [])
            check(froms and all(("namespaceSelector" in f and f["namespaceSelector"].get("matchLabels"))
                                or ("podSelector" in f and f["podSelector"].get("matchLabels")) for f in froms),
                  f"NetworkPolicy {pol['metadata']['name']}: an ingress rule admits the admin port without a "
                  "labelled namespaceSelector/podSelector")
for (kind, name), obj in optin.items():
    if kind == "Service":
        check(obj["spec"].get("clusterIP") == "None",
              f"opt-in Service {name}: must be headless, or admin calls reach a random replica")
    if kind == "NetworkPolicy":
        for rule in obj["spec"].get("ingress", []):
            check(rule.get("from"), f"opt-in NetworkPolicy {name}: an ingress rule without `from` admits everyone")

# One scrape method in the base: the pod annotations, and no
# ServiceMonitor/PodMonitor (those are in prometheus-operator/, opt-in).
annotations = pod["metadata"].get("annotations", {})
methods = []
if annotations.get("prometheus.io/scrape") == "true":
    methods.append("prometheus.io/scrape annotation")
methods += [f"{kind} {name}" for (kind, name) in k8s if kind in ("ServiceMonitor", "PodMonitor")]
check(len(methods) == 1, f"the base must have exactly one scrape method, has {methods or 'none'}")
check(annotations.get("prometheus.io/port") == str(ports["admin"]), "prometheus.io/port != admin port")
for (kind, name), obj in k8s.items():
    check(not obj["apiVersion"].startswith("monitoring.coreos.com/"),
          f"{kind} {name} needs the Prometheus Operator CRDs: it belongs in prometheus-operator/, not the base")
for (kind, name), mon in optin.items():
    if kind == "PodMonitor":
        check(selects_pod(mon["spec"]["selector"]["matchLabels"]), f"PodMonitor {name} does not select the app's pods")
        for ep in mon["spec"]["podMetricsEndpoints"]:
            check(ep["port"] in ports and ep["port"] == "admin", f"PodMonitor {name} scrapes {ep['port']}, not admin")
    check(kind != "ServiceMonitor", f"ServiceMonitor {name}: the admin port is in no Service; use a PodMonitor")

# A PodDisruptionBudget that lets a drain proceed but never takes every pod.
pdbs = [o for (kind, _), o in k8s.items() if kind == "PodDisruptionBudget"]
check(len(pdbs) == 1, "the base needs one PodDisruptionBudget")
for pdb in pdbs:
    check(selects_pod(pdb["spec"]["selector"]["matchLabels"]), "PodDisruptionBudget selector does not match the pod labels")
    replicas = deployment["spec"].get("replicas", 1)
    mu = pdb["spec"].get("maxUnavailable")
    ma = pdb["spec"].get("minAvailable")
    check((isinstance(mu, int) and 0 < mu < replicas) or (isinstance(ma, int) and 0 < ma < replicas),
          f"PodDisruptionBudget must keep a pod up and allow a drain with {replicas} replicas")

# The JWT key file of the documented `kubectl create secret --from-file` step
# is git-ignored.
ignored = (DEPLOY / "kubernetes" / ".gitignore").read_text().split() if (DEPLOY / "kubernetes" / ".gitignore").exists() else []
check("jwt-secret" in ignored, "kubernetes/.gitignore must ignore the jwt-secret key file")

config_path = fusebox["args"][fusebox["args"].index("-c") + 1]
config_dir, config_file = config_path.rsplit("/", 1)
mount = mounts.get(config_dir)
check(mount is not None, f"deployment: nothing mounted at {config_dir}")
check(mount is None or "subPath" not in mount,
      "deployment: the config is mounted with subPath: it would never be updated")
cm_name = volumes[mount["name"]]["configMap"]["name"] if mount else None
configmap = k8s.get(("ConfigMap", cm_name))
check(configmap is not None, f"deployment: ConfigMap {cm_name} is not in kubernetes/")
cfg = check_fusebox_config(yaml.safe_load(configmap["data"][config_file]), "configmap.yaml")

check(port_of(cfg["listen"]) == ports["http"], "configmap listen port != container port http")
check(port_of(cfg["admin"]["listen"]) == ports["admin"], "configmap admin port != container port admin")
for probe in ("livenessProbe", "readinessProbe"):
    check(fusebox[probe]["httpGet"]["port"] in ("admin", ports["admin"]), f"{probe} is not on the admin port")
check(fusebox["livenessProbe"]["httpGet"]["path"] == "/livez", "livenessProbe path is not /livez")
check(fusebox["readinessProbe"]["httpGet"]["path"] == "/readyz", "readinessProbe path is not /readyz")

shutdown = cfg["shutdown"]
drain = seconds(shutdown["drainDelay"]) + seconds(shutdown["gracePeriod"])
check(spec["terminationGracePeriodSeconds"] > drain,
      f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} <= drainDelay + gracePeriod ({drain}s)")

store_dir = cfg["store"]["path"].rsplit("/", 1)[0]
check(store_dir in mounts and not mounts[store_dir].get("readOnly"),
      f"store directory {store_dir} is not a writable mount (the root filesystem is read-only)")

secret_env = cfg["auth"]["jwt"]["hs256SecretEnv"]
env = {e["name"]: e for e in fusebox.get("env", [])}
check(secret_env in env, f"deployment: fusebox has no env {secret_env}")
if secret_env in env:
    ref = env[secret_env]["valueFrom"]["secretKeyRef"]
    check(not ref.get("optional"), "the JWT secretKeyRef is optional: fusebox would start without a key")
    readme = (DEPLOY / "README.md").read_text()
    check(f"kubectl create secret generic {ref['name']}" in readme and f"--from-file={ref['key']}" in readme,
          f"deploy/README.md does not show `kubectl create secret generic {ref['name']} --from-file={ref['key']}`")

# --- docker compose -------------------------------------------------------------
compose_dir = DEPLOY / "compose"
compose = docs["compose/docker-compose.yml"][0]
fb = compose["services"]["fusebox"]
build = fb["build"]
context = (compose_dir / build["context"]).resolve()
check(context == ROOT, f"compose build context {context} is not the repository root")
check((context / build["dockerfile"]).is_file(), "compose build dockerfile does not exist")
cmd = fb["command"]
cfg_path = cmd[cmd.index("-c") + 1]
cfg_dir, cfg_file = cfg_path.rsplit("/", 1)
bind = next((v for v in fb["volumes"] if isinstance(v, dict) and v.get("target") == cfg_dir), None)
check(bind is not None and bind["type"] == "bind", f"compose: {cfg_dir} is not a bind-mounted directory")
if bind:
    source = (compose_dir / bind["source"]).resolve()
    check(source.is_dir() and (source / cfg_file).is_file(), f"compose: {source}/{cfg_file} does not exist")
    ccfg = check_fusebox_config(yaml.safe_load((source / cfg_file).read_text()), "compose/fusebox.yaml")
    admin_port = port_of(ccfg["admin"]["listen"])
    check(any(str(p).endswith(f":{admin_port}") for p in fb["ports"]), "compose: admin port not published")
    check(any(str(p).endswith(f":{port_of(ccfg['listen'])}") for p in fb["ports"]), "compose: data port not published")
    check(f":{admin_port}/livez" in " ".join(fb["healthcheck"]["test"]), "compose: healthcheck is not /livez on admin")
    grace = seconds(fb["stop_grace_period"])
    cdrain = seconds(ccfg["shutdown"]["drainDelay"]) + seconds(ccfg["shutdown"]["gracePeriod"])
    check(grace > cdrain, f"compose: stop_grace_period {grace}s <= drainDelay + gracePeriod ({cdrain}s)")
    check(ccfg["auth"]["jwt"]["hs256SecretEnv"] in fb["environment"], "compose: JWT secret env not set")
    prom_cfg = docs["compose/prometheus.yml"][0]
    targets = [t for job in prom_cfg["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]]
    check(f"fusebox:{admin_port}" in targets, "compose prometheus.yml does not scrape fusebox's admin port")
prom = compose["services"]["prometheus"]
check(prom["depends_on"]["fusebox"]["condition"] == "service_healthy", "compose: prometheus does not wait for fusebox")
for vol in prom["volumes"]:
    src = str(vol).split(":")[0]
    if src.startswith("."):
        check((compose_dir / src).is_file(), f"compose: prometheus mounts missing {src}")

# --- Grafana dashboard (its queries are run against a real Prometheus by
# tests/prometheus_dashboard.rs; here only its shape) ---------------------------
import json  # noqa: E402

dash = json.loads((DEPLOY / "grafana" / "fusebox-fleet.json").read_text(encoding="utf-8"))
variables = {v["name"]: v for v in dash["templating"]["list"]}
check(variables.get("datasource", {}).get("type") == "datasource"
      and variables["datasource"].get("query") == "prometheus",
      "grafana: no `datasource` variable of type prometheus")
check("pod" in variables or "instance" in variables, "grafana: no pod/instance variable")
all_panels = []
stack = list(dash["panels"])
while stack:
    p = stack.pop(0)
    all_panels.append(p)
    stack += p.get("panels", [])
ids = [p["id"] for p in all_panels]
check(len(ids) == len(set(ids)), "grafana: duplicate panel ids")
exprs = []
for p in all_panels:
    if p["type"] == "row":
        continue
    check(p.get("targets"), f"grafana: panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        check(t.get("datasource", {}).get("uid") == "${datasource}",
              f"grafana: panel {p['title']!r} does not query ${{datasource}}")
        exprs.append(t["expr"])
        for var in re.findall(r"\$\{?(\w+)", t["expr"]):
            check(var.startswith("__") or var in variables, f"grafana: panel {p['title']!r} uses unknown ${var}")
        check('pod=~"$pod"' in t["expr"], f"grafana: panel {p['title']!r} ignores the pod variable: {t['expr']}")
for metric in ["fusebox_circuit_state", "fusebox_circuit_transitions_total", "fusebox_rejected_total",
               "fusebox_endpoint_ejections_total", "fusebox_endpoint_ejected", "fusebox_retries_total",
               "fusebox_requests_total", "fusebox_request_duration_seconds_bucket", "fusebox_config_reloads_total",
               "fusebox_config_last_reload_successful", "fusebox_store_write_errors_total", "fusebox_websocket_clients",
               "fusebox_operation_circuit_state", "fusebox_operation_circuit_transitions_total",
               "fusebox_operation_rejected_total", "fusebox_operation_requests_total",
               "fusebox_operation_request_duration_seconds_bucket"]:
    check(any(re.search(rf"\b{metric}\b", e) for e in exprs), f"grafana: no panel shows {metric}")

# --- release profile and Dockerfile: a stripped binary ---------------------------
cargo_toml = (ROOT / "Cargo.toml").read_text()
release = re.search(r"^\[profile\.release\]\n(.*?)(?=^\[)", cargo_toml, re.M | re.S)
check(release and re.search(r'^strip\s*=\s*("debuginfo"|"symbols"|true)', release.group(1), re.M),
      "Cargo.toml [profile.release] does not strip the binary")

# --- Dockerfile -------------------------------------------------------------------
dockerfile = (DEPLOY / "Dockerfile").read_text()
check("CARGO_PROFILE_RELEASE_STRIP=symbols" in dockerfile, "Dockerfile does not strip the symbols of the image's binary")
# The runtime image has no shell and no curl: its last FROM is distroless (or
# scratch), it installs nothing, and its HEALTHCHECK is the binary itself.
runtime_stage = dockerfile[dockerfile.rindex("\nFROM "):]
check(re.search(r"^FROM (gcr\.io/distroless/|scratch)", runtime_stage.lstrip(), re.M) is not None,
      "Dockerfile: the runtime stage is not distroless/scratch")
check(not re.search(r"^RUN ", runtime_stage, re.M), "Dockerfile: a RUN in the runtime stage (it has no shell)")
check(re.search(r'^\s*CMD \["/usr/local/bin/fusebox", "healthcheck"', runtime_stage, re.M) is not None,
      "Dockerfile: HEALTHCHECK is not `fusebox healthcheck`")
check("curl" not in " ".join(compose["services"]["fusebox"]["healthcheck"]["test"]),
      "compose: the fusebox healthcheck uses curl, which the image does not have")
for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
    check(src == "." or (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist")

if errors:
    print("\n".join(f"FAIL {e}" for e in errors))
    sys.exit(1)
print(f"deploy/ consistency: {len(docs)} YAML files parsed, all cross-references agree")
