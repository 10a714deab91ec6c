#!/bin/sh
# install-cni.sh: put the swift-cni plugins and a network config on a Kubernetes node.
#
# The install-cni pattern: a privileged-enough DaemonSet pod mounts the node's /opt/cni/bin and
# /etc/cni/net.d, copies the plugin executables into the first and writes a conflist for the
# node's pod CIDR into the second. The container runtime (containerd, CRI-O) picks the config up
# and execs the plugins for every pod on the node.
#
# Every file is written to a temp name in its target directory and renamed over the old one, so
# the runtime never sees a half-written binary or config, and a binary being executed is
# replaced (new inode) rather than overwritten (which would fail with "text file busy"). Files
# already identical are left alone, so running it again changes nothing.
#
# Environment (defaults in brackets):
#   POD_CIDR         the node's pod CIDR(s), comma-separated for dual stack; when empty, read from
#                    the Node object (.spec.podCIDRs) through the API server with NODE_NAME
#   NODE_NAME        this node's name (DaemonSet: fieldRef spec.nodeName)
#   SRC_BIN_DIR      where the image holds the plugins [/opt/swift-cni/bin]
#   HOST_BIN_DIR     the node's plugin dir, mounted [/host/opt/cni/bin]
#   HOST_CONF_DIR    the node's config dir, mounted [/host/etc/cni/net.d]
#   CONF_NAME        config file name; runtimes use the first in lexical order [10-swift-cni.conflist]
#   NETWORK_NAME     [swift-cni]     BRIDGE_NAME [cni0]     MTU [unset: kernel default]
#   IP_MASQ          SNAT pod traffic leaving the pod CIDR [true]
#   HAIRPIN          hairpin mode, for a pod reaching itself through a Service [true]
#   PORTMAP          chain portmap for hostPort: true, false, auto = when the plugin is installed [auto]
#   HOST_SBIN_DIR    where to link cnictl from, mounted (e.g. /host/usr/local/sbin) [unset: no link]
#   NODE_BIN_DIR     the node's own path of HOST_BIN_DIR, the link's target [/opt/cni/bin]
#   SLEEP            after installing, sleep forever (the DaemonSet's container) [false]
#   KUBE_API_URL     API server base URL [https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT]
#   SERVICEACCOUNT_DIR  token and CA for the API [/var/run/secrets/kubernetes.io/serviceaccount]
set -eu

SRC_BIN_DIR=${SRC_BIN_DIR:-/opt/swift-cni/bin}
HOST_BIN_DIR=${HOST_BIN_DIR:-/host/opt/cni/bin}
HOST_CONF_DIR=${HOST_CONF_DIR:-/host/etc/cni/net.d}
CONF_NAME=${CONF_NAME:-10-swift-cni.conflist}
NETWORK_NAME=${NETWORK_NAME:-swift-cni}
BRIDGE_NAME=${BRIDGE_NAME:-cni0}
MTU=${MTU:-}
IP_MASQ=${IP_MASQ:-true}
HAIRPIN=${HAIRPIN:-true}
PORTMAP=${PORTMAP:-auto}
SLEEP=${SLEEP:-false}
HOST_SBIN_DIR=${HOST_SBIN_DIR:-}
NODE_BIN_DIR=${NODE_BIN_DIR:-/opt/cni/bin}
SERVICEACCOUNT_DIR=${SERVICEACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
POD_CIDR=${POD_CIDR:-}
NODE_NAME=${NODE_NAME:-}
# Required: the default conflist's own. Optional (installed when the image carries them, so an
# image built before they existed still installs): the chained and other main plugins, which a
# node's other conflists (podman's, a ptp network) name by type.
PLUGINS="bridge host-local static loopback"
OPTIONAL_PLUGINS="portmap ptp firewall tuning bandwidth cluster-ipam"
TMP_SUFFIX=".swift-cni-tmp"

log() { echo "install-cni: $*"; }
die() { echo "install-cni: error: $*" >&2; exit 1; }

is_bool() { [ "$1" = true ] || [ "$1" = false ]; }
for flag in IP_MASQ HAIRPIN SLEEP; do
    eval "value=\$$flag"
    is_bool "$value" || die "$flag must be true or false, not \"$value\""
done
case "$PORTMAP" in true|false|auto) ;; *) die "PORTMAP must be true, false or auto, not \"$PORTMAP\"" ;; esac
case "$MTU" in *[!0-9]*) die "MTU must be a number, not \"$MTU\"" ;; esac

# The node's pod CIDRs from the API server (the ServiceAccount may `get` nodes).
pod_cidr_from_api() {
    [ -n "$NODE_NAME" ] || die "no pod CIDR: set POD_CIDR, or NODE_NAME to read it from the Node object"
    api=${KUBE_API_URL:-https://${KUBERNETES_SERVICE_HOST:-kubernetes.default.svc}:${KUBERNETES_SERVICE_PORT:-443}}
    set -- -sS --fail --max-time 20
    [ -r "$SERVICEACCOUNT_DIR/ca.crt" ] && set -- "$@" --cacert "$SERVICEACCOUNT_DIR/ca.crt"
    [ -r "$SERVICEACCOUNT_DIR/token" ] && set -- "$@" -H "Authorization: Bearer $(cat "$SERVICEACCOUNT_DIR/token")"
    node=$(curl "$@" "$api/api/v1/nodes/$NODE_NAME") || die "cannot read node $NODE_NAME from $api"
    node=$(printf '%s' "$node" | tr -d ' \n\t\r')
    cidrs=$(printf '%s' "$node" | sed -n 's/.*"podCIDRs":\[\([^]]*\)\].*/\1/p' | tr -d '"')
    [ -n "$cidrs" ] || cidrs=$(printf '%s' "$node" | sed -n 's/.*"podCIDR":"\([^"]*\)".*/\1/p')
    [ -n "$cidrs" ] || die "node $NODE_NAME has no spec.podCIDR (is the controller manager allocating node CIDRs?)"
    printf '%s' "$cidrs"
}

[ -n "$POD_CIDR" ] || POD_CIDR=$(pod_cidr_from_api)

# One range set per CIDR: host-local allocates one address from each (dual stack).
ranges=""
families=""
old_ifs=$IFS
IFS=,
for cidr in $POD_CIDR; do
    case "$cidr" in
        *[!0-9./]*/*) family=6; echo "$cidr" | grep -Eq '^[0-9a-fA-F:]+/[0-9]{1,3}$' || die "invalid pod CIDR \"$cidr\"" ;;
        */*) family=4; echo "$cidr" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$' || die "invalid pod CIDR \"$cidr\"" ;;
        *) die "invalid pod CIDR \"$cidr\" (expected address/prefix)" ;;
    esac
    case "$families" in *$family*) die "two IPv$family pod CIDRs in \"$POD_CIDR\"" ;; esac
    families="$families$family"
    ranges="$ranges${ranges:+,
}          [{\"subnet\": \"$cidr\"}]"
done
IFS=$old_ifs
[ -n "$ranges" ] || die "empty pod CIDR"

# Replace $2 with $1's content atomically, unless identical. Prints what it did.
install_file() {
    source=$1 target=$2 mode=$3
    if [ -f "$target" ] && cmp -s "$source" "$target"; then
        log "unchanged $target"
        return 0
    fi
    temp="$(dirname "$target")/.$(basename "$target")$TMP_SUFFIX.$$"
    cp "$source" "$temp"
    chmod "$mode" "$temp"
    mv -f "$temp" "$target"
    log "installed $target"
}

mkdir -p "$HOST_BIN_DIR" "$HOST_CONF_DIR"
# Temp files of an earlier run killed half way.
rm -f "$HOST_BIN_DIR"/.*"$TMP_SUFFIX".* "$HOST_CONF_DIR"/.*"$TMP_SUFFIX".*

for plugin in $PLUGINS; do
    [ -f "$SRC_BIN_DIR/$plugin" ] || die "plugin $plugin missing from $SRC_BIN_DIR"
done
for plugin in $PLUGINS $OPTIONAL_PLUGINS; do
    if [ -f "$SRC_BIN_DIR/$plugin" ]; then
        install_file "$SRC_BIN_DIR/$plugin" "$HOST_BIN_DIR/$plugin" 0755
    fi
done

# cnictl, the operator's tool, beside the plugins (runtimes exec only plugin types), and a link to
# it on the node's PATH when that directory is mounted.
if [ -f "$SRC_BIN_DIR/cnictl" ]; then
    install_file "$SRC_BIN_DIR/cnictl" "$HOST_BIN_DIR/cnictl" 0755
    if [ -n "$HOST_SBIN_DIR" ]; then
        mkdir -p "$HOST_SBIN_DIR"
        if [ "$(readlink "$HOST_SBIN_DIR/cnictl" 2>/dev/null)" = "$NODE_BIN_DIR/cnictl" ]; then
            log "unchanged $HOST_SBIN_DIR/cnictl"
        else
            ln -sfn "$NODE_BIN_DIR/cnictl" "$HOST_SBIN_DIR/.cnictl$TMP_SUFFIX.$$"
            mv -f "$HOST_SBIN_DIR/.cnictl$TMP_SUFFIX.$$" "$HOST_SBIN_DIR/cnictl"
            log "linked $HOST_SBIN_DIR/cnictl -> $NODE_BIN_DIR/cnictl"
        fi
    fi
fi

chain_portmap=false
case "$PORTMAP" in
    true) [ -x "$HOST_BIN_DIR/portmap" ] || die "PORTMAP=true but $HOST_BIN_DIR/portmap is missing"; chain_portmap=true ;;
    auto) [ -x "$HOST_BIN_DIR/portmap" ] && chain_portmap=true ;;
esac

conf=$(mktemp)
trap 'rm -f "$conf"' EXIT
{
    echo '{'
    echo '  "cniVersion": "1.0.0",'
    echo "  \"name\": \"$NETWORK_NAME\","
    echo '  "plugins": ['
    echo '    {'
    echo '      "type": "bridge",'
    echo "      \"bridge\": \"$BRIDGE_NAME\","
    echo '      "isGateway": true,'
    echo '      "isDefaultGateway": true,'
    echo "      \"ipMasq\": $IP_MASQ,"
    echo "      \"hairpinMode\": $HAIRPIN,"
    [ -z "$MTU" ] || echo "      \"mtu\": $MTU,"
    echo '      "ipam": {'
    echo '        "type": "host-local",'
    echo '        "ranges": ['
    echo "$ranges"
    echo '        ]'
    echo '      }'
    if [ "$chain_portmap" = true ]; then
        echo '    },'
        echo '    {'
        echo '      "type": "portmap",'
        echo '      "capabilities": {"portMappings": true}'
    fi
    echo '    }'
    echo '  ]'
    echo '}'
} > "$conf"
install_file "$conf" "$HOST_CONF_DIR/$CONF_NAME" 0644
log "network $NETWORK_NAME on bridge $BRIDGE_NAME for pod CIDR $POD_CIDR"

if [ "$SLEEP" = true ]; then
    # The DaemonSet's container stays up; a new image version reruns the install on rollout.
    trap - EXIT
    rm -f "$conf"
    exec sleep infinity
fi
