#!/usr/bin/env bash
# Makes the certificates of a meshcache StatefulSet and the Secret that
# holds them (see README.md beside this file).
#
#   make-certs.sh REPLICAS [NAMESPACE]
#
# Writes, under $CERTS_DIR (default ./meshcache-certs): the cluster CA
# (ca.crt, and ca.key: keep it secret, and off the cluster) if there is
# none yet, and meshcache-N.crt and meshcache-N.key for N = 0 ..
# REPLICAS-1, each with the pod's DNS names. A certificate already there is
# kept, unless FORCE=1 (to re-issue them all, as when rotating).
#
# Then prints the kubectl command that creates the Secret meshcache-certs
# in NAMESPACE (default `default`) from ca.crt and these certificates and
# keys, or updates it in place if it exists; with APPLY=1 it runs it.
#
# Environment: MESHCACHE, the meshcache binary (default: `meshcache` on
# PATH); CERTS_DIR; FORCE=1; APPLY=1.
set -euo pipefail

usage() {
    echo "usage: $0 REPLICAS [NAMESPACE]   (env: MESHCACHE, CERTS_DIR, FORCE=1, APPLY=1)" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
replicas=$1
namespace=${2:-default}
[[ $replicas =~ ^[1-9][0-9]*$ ]] || usage

bin=${MESHCACHE:-meshcache}
dir=${CERTS_DIR:-meshcache-certs}
# The names in statefulset.yaml and service.yaml.
statefulset=meshcache
service=meshcache-peers
secret=meshcache-certs

if [ ! -f "$dir/ca.crt" ]; then
    "$bin" certs init --dir "$dir"
fi

force=()
[ "${FORCE:-0}" = 1 ] && force=(--force)

from_files=(--from-file="$dir/ca.crt")
for ((i = 0; i < replicas; i++)); do
    name=$statefulset-$i
    if [ -f "$dir/$name.crt" ] && [ ${#force[@]} -eq 0 ]; then
        echo "kept $dir/$name.crt (FORCE=1 to issue it again)"
    else
        # Peers check the certificate's CA and node name, not the address
        # they dialed, so the pod IP (which changes) need not be in it; the
        # pod's DNS names are, for tools that look.
        "$bin" certs issue "$name" --dir "$dir" "${force[@]}" \
            --dns "$name.$service.$namespace.svc.cluster.local" \
            --dns "$name.$service.$namespace.svc"
    fi
    from_files+=(--from-file="$dir/$name.crt" --from-file="$dir/$name.key")
done

# `create --dry-run=client -o yaml | apply` creates the Secret, or updates
# it in place: the pods see the new files without a restart (then reload
# them: README.md, "Rotating certificates").
create=(kubectl --namespace "$namespace" create secret generic "$secret" "${from_files[@]}" --dry-run=client -o yaml)
apply=(kubectl --namespace "$namespace" apply -f -)
if [ "${APPLY:-0}" = 1 ]; then
    "${create[@]}" | "${apply[@]}"
else
    echo
    echo "The Secret (run this, or run this script again with APPLY=1):"
    printf '%q ' "${create[@]}"
    printf '| '
    printf '%q ' "${apply[@]}"
    echo
fi
