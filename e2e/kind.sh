#!/usr/bin/env bash
# Meshscale on a local kind cluster, end to end, for anyone with Docker and kind:
#
#   ./e2e/kind.sh
#
#   1. creates the kind cluster $KIND_CLUSTER (default meshscale) unless it exists;
#   2. builds the three images with deploy/Dockerfile and loads them into its nodes
#      (no registry needed; SKIP_BUILD=1 reuses images loaded before, tag $TAG);
#   3. installs charts/meshscale (the operator makes its API key and MeshUser k8s itself);
#   4. deploys a two-replica Deployment annotated meshscale.dev/inject: "true", checks
#      that both pods got the sidecar and are MeshNodes, and that one pings the other
#      over the mesh; then deletes a pod and checks that its node goes too.
# Steps 2-4 are e2e/k8s-real-cluster.sh, which does the same on any cluster.
#
#   KEEP=1            leave the release and the demo namespace installed
#   DELETE_CLUSTER=1  delete the kind cluster at the end (only one this script created)
#
# Needs: docker, kind, kubectl, helm 3.17+. Not part of e2e/test-all.sh: CI has no Docker.
set -euo pipefail

cd "$(dirname "$0")/.."

KIND_CLUSTER=${KIND_CLUSTER:-meshscale}
export KIND_CLUSTER
# Images loaded into kind are never pulled, so the registry is only a name prefix.
export REGISTRY=${REGISTRY:-meshscale.local}

fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done

created=0
# Captured first: grep -q exiting early would SIGPIPE kind and trip pipefail.
clusters=$(kind get clusters 2>/dev/null || true)
if grep -qx "$KIND_CLUSTER" <<<"$clusters"; then
  printf '\n== using the existing kind cluster %s\n' "$KIND_CLUSTER" >&2
else
  printf '\n== creating the kind cluster %s\n' "$KIND_CLUSTER" >&2
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
  created=1
fi
finish() {
  if [[ ${DELETE_CLUSTER:-0} == 1 && $created == 1 ]]; then
    kind delete cluster --name "$KIND_CLUSTER" || true
  fi
}
trap finish EXIT

kubectl config use-context "kind-$KIND_CLUSTER" >/dev/null
e2e/k8s-real-cluster.sh
