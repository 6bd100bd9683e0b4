#!/usr/bin/env bash
# Cluster mode in one command: the test cluster up (scripts/cluster.sh, built once per
# machine), Ironvisor's images built offline and imported into its containerd, and
# deploy/ applied with kubectl -k; waits until the controller, the node agent and the
# api-server run.
# Then: eval "$(scripts/cluster.sh env)"; kubectl apply -f examples/vm-small.yaml
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

log() { printf '\n=== %s ===\n' "$*"; }

log "system packages"
scripts/install-deps.sh
log "guest images"
python3 images/build.py
log "test cluster"
scripts/cluster.sh up
eval "$(scripts/cluster.sh env)"
log "Ironvisor images (built offline, imported into the cluster's containerd)"
python3 -m images.containers import
log "kubectl apply -k deploy/"
kubectl apply -k deploy/
kubectl wait --for=condition=Established --timeout=60s \
  crd/virtualmachines.ironvisor.io crd/virtualmachineinstances.ironvisor.io
# Freshly imported images under unchanged tags: restart so the pods run them.
kubectl rollout restart -n ironvisor-system deployment/ironvisor-controller \
  daemonset/ironvisor-handler deployment/ironvisor-apiserver
kubectl rollout status -n ironvisor-system deployment/ironvisor-controller --timeout=180s
kubectl rollout status -n ironvisor-system daemonset/ironvisor-handler --timeout=180s
kubectl rollout status -n ironvisor-system deployment/ironvisor-apiserver --timeout=180s
# The webhooks and the subresource API answer once the api-server injected its CA.
kubectl wait --for=condition=Available --timeout=120s apiservice/v1alpha1.subresources.ironvisor.io
log "Ironvisor is running"
echo 'eval "$(scripts/cluster.sh env)"; kubectl apply -f examples/vm-small.yaml; kubectl get vm,vmi -w'
