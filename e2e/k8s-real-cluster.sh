#!/usr/bin/env bash
# End-to-end check on a REAL Kubernetes cluster (kind, k3d, a cloud cluster...).
# It cannot run in the project's CI (no API server there); run it yourself:
#
#   REGISTRY=registry.example.com/me ./e2e/k8s-real-cluster.sh
#
# What it does, against the current kubectl context:
#   1. builds the three images with deploy/Dockerfile and pushes them to $REGISTRY
#      (SKIP_BUILD=1 uses images already there, tag $TAG);
#   2. installs charts/meshscale into $NS with the in-cluster login server;
#   3. waits for what the operator sets up by itself: the MeshUser k8s (Ready);
#   4. deploys two annotated pods in $APP_NS and checks that the operator made the
#      namespace's injection key (PreAuthKey + Secret), that both pods are MeshNodes,
#      and that one pod pings the other over the mesh;
#   5. deletes one pod and checks that its node goes with it.
# KEEP=1 leaves everything installed; otherwise both namespaces are deleted at the end.
#
# Needs: docker (with buildx), kubectl, helm 3.17+. With kind, instead of a registry:
#   KIND_CLUSTER=kind REGISTRY=meshscale.local ./e2e/k8s-real-cluster.sh
# loads the images into the kind nodes instead of pushing them.
set -euo pipefail

cd "$(dirname "$0")/.."

REGISTRY=${REGISTRY:?set REGISTRY to an image registry prefix the cluster can pull from}
TAG=${TAG:-e2e-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
NS=${NS:-meshscale}
APP_NS=${APP_NS:-meshscale-e2e}
REL=${REL:-meshscale}
TIMEOUT=${TIMEOUT:-300s}

log() { printf '\n== %s\n' "$*" >&2; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    log "cleaning up (KEEP=1 to keep)"
    kubectl delete namespace "$APP_NS" --ignore-not-found --wait=false || true
    helm uninstall "$REL" -n "$NS" || true
    kubectl delete namespace "$NS" --ignore-not-found --wait=false || true
  fi
}
trap cleanup EXIT

for tool in kubectl helm; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done

# -- 1. images -----------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  command -v docker >/dev/null || fail "docker not found (or set SKIP_BUILD=1)"
  for bin in meshscale meshscale-operator meshscale-sidecar; do
    log "building $REGISTRY/$bin:$TAG"
    docker build -f deploy/Dockerfile --build-arg BIN="$bin" -t "$REGISTRY/$bin:$TAG" .
    if [[ -n "${KIND_CLUSTER:-}" ]]; then
      kind load docker-image --name "$KIND_CLUSTER" "$REGISTRY/$bin:$TAG"
    else
      docker push "$REGISTRY/$bin:$TAG"
    fi
  done
fi

# -- 2. chart --------------------------------------------------------------------
# The login server is the in-cluster Service; its certificate comes from the
# chart's CA, which injected sidecars get through a ConfigMap (sidecar.caBundle).
SERVER_URL="https://$REL-control.$NS.svc:8080"
log "installing the chart into $NS (login server $SERVER_URL)"
helm upgrade --install "$REL" charts/meshscale -n "$NS" --create-namespace \
  --set image.registry="$REGISTRY" --set image.tag="$TAG" \
  --set serverUrl="$SERVER_URL" \
  --set operator.replicas=1 \
  --set sidecar.caBundle.configMapName=meshscale-ca \
  --wait=false
kubectl -n "$NS" rollout status "deploy/$REL-control" --timeout="$TIMEOUT"

# -- 3. zero touch: no API key step, no hand-made MeshUser -----------------------
# The operator generates the control TLS and admin API key Secrets (the control
# pod waits for them) and creates the MeshUser injected pods join as.
kubectl -n "$NS" rollout status "deploy/$REL-operator" --timeout="$TIMEOUT"
log "waiting for the MeshUser k8s the operator creates"
for _ in $(seq 60); do
  kubectl get meshuser k8s >/dev/null 2>&1 && break
  sleep 5
done
kubectl wait meshuser/k8s --for=condition=Ready --timeout="$TIMEOUT"

# -- 4. two injected pods ----------------------------------------------------------
log "deploying two annotated pods into $APP_NS"
kubectl create namespace "$APP_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" get secret "$REL-control-tls" -o jsonpath='{.data.ca\.crt}' | base64 -d \
  | kubectl -n "$APP_NS" create configmap meshscale-ca --from-file=ca.crt=/dev/stdin \
      --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$APP_NS" apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: demo}}
  template:
    metadata:
      labels: {app: demo}
      annotations: {meshscale.dev/inject: "true"}
    spec:
      containers:
        - name: app
          image: busybox:1.36
          command: ["sleep", "1000000"]
YAML

log "waiting for the injection key the operator makes for $APP_NS"
for _ in $(seq 60); do
  kubectl -n "$APP_NS" get secret meshscale-authkey >/dev/null 2>&1 && break
  sleep 5
done
kubectl -n "$APP_NS" get preauthkey meshscale-authkey -o wide \
  || fail "no PreAuthKey meshscale-authkey in $APP_NS"
kubectl -n "$APP_NS" get secret meshscale-authkey >/dev/null \
  || fail "no injection Secret in $APP_NS"
kubectl -n "$APP_NS" rollout status deploy/demo --timeout="$TIMEOUT"

mapfile -t PODS < <(kubectl -n "$APP_NS" get pods -l app=demo -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[[ ${#PODS[@]} -eq 2 ]] || fail "expected 2 pods, got ${#PODS[@]}"
for p in "${PODS[@]}"; do
  kubectl -n "$APP_NS" get pod "$p" -o jsonpath='{.spec.initContainers[0].name}' | grep -qx meshscale-sidecar \
    || fail "pod $p has no injected sidecar"
done

# The sidecar registers as <pod>-<namespace>; MeshNodes mirror the node table.
node_addr() { # hostname -> first address, empty when not (yet) a MeshNode
  kubectl get meshnodes -o jsonpath="{range .items[?(@.status.hostname==\"$1\")]}{.status.addresses[0]}{end}"
}
log "waiting for both pods to be MeshNodes"
for _ in $(seq 60); do
  A=$(node_addr "${PODS[0]}-$APP_NS"); B=$(node_addr "${PODS[1]}-$APP_NS")
  [[ -n "$A" && -n "$B" ]] && break
  sleep 5
done
kubectl get meshnodes
[[ -n "${B:-}" && -n "${A:-}" ]] || fail "pods did not show up as MeshNodes"

log "ping ${PODS[0]} -> ${PODS[1]} ($B) over the mesh"
kubectl -n "$APP_NS" exec "${PODS[0]}" -c app -- ping -c 3 -W 5 "$B" \
  || fail "no ping over the mesh"

# -- 5. a deleted pod takes its node with it -------------------------------------
GONE="${PODS[0]}-$APP_NS"
log "deleting ${PODS[0]}: its node must go"
kubectl -n "$APP_NS" delete pod "${PODS[0]}" --wait=true
for _ in $(seq 30); do
  [[ -z "$(node_addr "$GONE")" ]] && break
  sleep 2
done
[[ -z "$(node_addr "$GONE")" ]] || fail "node $GONE still there after its pod was deleted"
kubectl -n "$NS" exec "deploy/$REL-control" -- meshscale nodes list

log "OK: injection, MeshNodes, mesh ping and pod cleanup all work"
