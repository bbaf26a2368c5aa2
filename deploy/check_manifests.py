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
prom_rule = docs["kubernetes/prometheusrule.yaml"][0]
check(prom_rule["spec"]["groups"] == alerts["groups"],
      "kubernetes/prometheusrule.yaml spec.groups differ from prometheus/alerts.yml groups")

# --- kubernetes ---------------------------------------------------------------
k8s = {}
for name, objs in docs.items():
    if name.startswith("kubernetes/"):
        for obj in objs:
            k8s[(obj["kind"], obj["metadata"]["name"])] = obj
deployment = next(o for (kind, _), o in k8s.items() if kind == "Deployment")
service = next(o for (kind, _), o in k8s.items() if kind == "Service")
monitor = next(o for (kind, _), o in k8s.items() if kind == "ServiceMonitor")
pod = deployment["spec"]["template"]
spec = pod["spec"]
fusebox = next(c for c in spec["containers"] if c["name"] == "fusebox")
ports = {p["name"]: p["containerPort"] for p in fusebox["ports"]}
volumes = {v["name"]: v for v in spec["volumes"]}
mounts = {m["mountPath"]: m for m in fusebox["volumeMounts"]}

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
annotations = pod["metadata"].get("annotations", {})
check(annotations.get("prometheus.io/port") == str(ports["admin"]), "prometheus.io/port != admin port")

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
    secret = k8s.get(("Secret", ref["name"]))
    check(secret is not None and ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})},
          f"Secret {ref['name']} with key {ref['key']} is not in kubernetes/")

labels = pod["metadata"]["labels"]
check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()),
      "Service selector does not match the pod labels")
for p in service["spec"]["ports"]:
    check(p["targetPort"] in ports or p["targetPort"] in ports.values(),
          f"Service port {p['name']} targets {p['targetPort']}, not a fusebox container port")
service_ports = {p["name"] for p in service["spec"]["ports"]}
check(all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()),
      "ServiceMonitor selector does not match the Service labels")
for ep in monitor["spec"]["endpoints"]:
    check(ep["port"] in service_ports, f"ServiceMonitor port {ep['port']} is not a Service port name")

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

# --- Dockerfile -------------------------------------------------------------------
dockerfile = (DEPLOY / "Dockerfile").read_text()
for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
    check(src == "." or (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist")

if errors:
    print("\n".join(f"FAIL {e}" for e in errors))
    sys.exit(1)
print(f"deploy/ consistency: {len(docs)} YAML files parsed, all cross-references agree")
