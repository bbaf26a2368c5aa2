#!/usr/bin/env python3
"""Checks of what `kubectl kustomize` renders (deploy/check.sh makes the
files): the base (deploy/kubernetes) and the component example
(deploy/kubernetes/examples/sidecar-component). Schemas are
kubernetes-validate's job; this checks what fusebox needs:

- every object carries the recommended app.kubernetes.io/* labels;
- each Deployment runs fusebox as a native sidecar (initContainers,
  restartPolicy: Always) with a startupProbe on /livez, liveness on /livez
  and readiness on /readyz on its admin port, a read-only, non-root,
  capability-free container, its config mounted as a directory (no
  subPath) from a ConfigMap of the same output, and a grace period longer
  than the config's drain;
- every app container has a readiness probe of its own;
- that config names upstreams under `readiness.upstreams` that it defines;
- the Service targets fusebox's data port, never the admin port;
- the component's sidecar is the base's (image, args, probes, resources,
  security, env), so the two forms cannot drift apart.

Usage: check_rendered.py BASE.yaml EXAMPLE.yaml [--configs DIR]
(--configs writes each rendered fusebox.yaml to DIR for `fusebox check`).
"""

import re
import sys
from pathlib import Path

import yaml

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
          "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")
errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


def seconds(duration):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration).strip())
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)] if m else 0.0


def port_number(container, port):
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p["name"] == port), None)


def sidecar_of(where, objs):
    """The fusebox sidecar of the one Deployment, checked; with its config."""
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
        got = o["metadata"].get("labels", {})
        missing = [k for k in LABELS if k not in got]
        check(not missing, f"{where}: {o['kind']} {o['metadata']['name']} lacks labels {missing}")
    deployments = by_kind.get("Deployment", [])
    check(len(deployments) == 1, f"{where}: want one Deployment, got {len(deployments)}")
    if not deployments:
        return None, None
    dep = deployments[0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    missing = [k for k in LABELS if k not in pod["metadata"].get("labels", {})]
    check(not missing, f"{where}: the pod template lacks labels {missing}")
    side = [c for c in spec.get("initContainers", []) if c["name"] == "fusebox"]
    check(len(side) == 1, f"{where}: no fusebox init container")
    if not side:
        return None, None
    fb = side[0]
    check(fb.get("restartPolicy") == "Always", f"{where}: fusebox init container lacks restartPolicy: Always")
    check(not any(c["name"] == "fusebox" for c in spec["containers"]), f"{where}: fusebox is also a plain container")
    admin = port_number(fb, 9901) if any(p["containerPort"] == 9901 for p in fb["ports"]) else None
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        p = fb.get(probe, {}).get("httpGet", {})
        check(p.get("path") == path, f"{where}: fusebox {probe} is not GET {path}")
        check(port_number(fb, p.get("port")) == admin, f"{where}: fusebox {probe} is not on the admin port")
    sc = fb.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") and sc.get("runAsNonRoot") and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: fusebox securityContext is not hardened")
    for c in spec["containers"]:
        check("readinessProbe" in c, f"{where}: app container {c['name']} has no readiness probe")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in fb.get("volumeMounts", [])}
    for m in mounts.values():
        check(m["name"] in volumes, f"{where}: fusebox mounts unknown volume {m['name']}")
    args = fb["args"]
    cfg_dir, cfg_file = args[args.index("-c") + 1].rsplit("/", 1)
    mount = mounts.get(cfg_dir)
    check(mount is not None and "subPath" not in mount, f"{where}: the config directory {cfg_dir} is not mounted whole")
    cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
    cm = next((o for o in by_kind.get("ConfigMap", []) if o["metadata"]["name"] == cm_name), None)
    check(cm is not None, f"{where}: ConfigMap {cm_name} of the sidecar is not in the output")
    if cm is None:
        return fb, None
    cfg_text = cm["data"].get(cfg_file)
    check(cfg_text is not None, f"{where}: ConfigMap {cm_name} has no {cfg_file}")
    cfg = yaml.safe_load(cfg_text or "{}")
    ready = (cfg.get("readiness") or {}).get("upstreams") or []
    check(ready and all(u in cfg.get("upstreams", {}) for u in ready),
          f"{where}: readiness.upstreams {ready} must name the app's upstream(s)")
    drain = seconds(cfg.get("shutdown", {}).get("drainDelay", "5s")) + seconds(cfg.get("shutdown", {}).get("gracePeriod", "30s"))
    check(spec.get("terminationGracePeriodSeconds", 30) > drain, f"{where}: grace period <= fusebox's drain ({drain}s)")
    data_port = int(str(cfg["listen"]).rsplit(":", 1)[1])
    for svc in by_kind.get("Service", []):
        for p in svc["spec"]["ports"]:
            check(port_number(fb, p["targetPort"]) == data_port,
                  f"{where}: Service {svc['metadata']['name']} targets {p['targetPort']}, not fusebox's data port")
    anns = pod["metadata"].get("annotations", {})
    check(anns.get("prometheus.io/port") == str(admin), f"{where}: the scrape annotation is not the admin port")
    return fb, cfg_text


def comparable(c):
    """A sidecar without what the forms name differently (port and volume names)."""
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probe = lambda p: {**c[p], "httpGet": {**c[p]["httpGet"], "port": ports.get(c[p]["httpGet"]["port"])}}  # noqa: E731
    sc = {k: v for k, v in c.get("securityContext", {}).items() if k != "seccompProfile"}
    return {
        "image": c["image"], "args": c["args"], "restartPolicy": c.get("restartPolicy"),
        "ports": sorted(ports.values()), "env": [e["name"] for e in c.get("env", [])],
        "resources": c.get("resources"), "securityContext": sc,
        "probes": {p: probe(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")},
        "mounts": sorted((m["mountPath"], bool(m.get("readOnly"))) for m in c["volumeMounts"]),
    }


def main():
    args = sys.argv[1:]
    out_dir = None
    if "--configs" in args:
        i = args.index("--configs")
        out_dir = Path(args[i + 1])
        args = args[:i] + args[i + 2:]
    base_path, example_path = args
    sidecars = {}
    for name, path in (("base", base_path), ("component example", example_path)):
        objs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        fb, cfg_text = sidecar_of(f"{name} ({path})", objs)
        sidecars[name] = fb
        if out_dir and cfg_text is not None:
            (out_dir / f"{name.replace(' ', '-')}.fusebox.yaml").write_text(cfg_text)
    if all(sidecars.values()):
        a, b = comparable(sidecars["base"]), comparable(sidecars["component example"])
        for key in a:
            check(a[key] == b[key], f"the component's sidecar differs from the base's in {key}: {a[key]} != {b[key]}")
    if errors:
        print("\n".join(f"FAIL {e}" for e in errors))
        sys.exit(1)
    print("rendered manifests: native sidecar, probes, labels, config and Services agree")


main()
