# shellcheck shell=bash
# Helpers shared by the lab's provisioning scripts (router.sh, ftp-server.sh, client.sh).
#
# The scripts run the same way inside a network namespace (`ip netns exec NODE bash ...`) and on
# a Debian 12 VM (the Vagrant provisioner), so everything here works from inside the node and
# never reaches outside it: processes are recorded in pid files under the node's state
# directory and stopped only through them. See README.md for the environment they expect.
set -euo pipefail

log() { printf '[lab %s] %s\n' "${LAB_NODE:-?}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need VAR...: fail early, naming the variable, instead of half-provisioning a node.
need() {
    local v
    for v in "$@"; do
        [ -n "${!v:-}" ] || die "$v is not set (see alg/lab/provision/README.md)"
    done
}

# var NAME: the value of a variable whose name is built at run time (upper-cased), or "".
var() {
    local n="${1^^}"
    printf '%s' "${!n:-}"
}

node_dir() { printf '%s/nodes/%s' "$LAB_STATE_DIR" "$LAB_NODE"; }

# iface_of ADDRESS: the interface carrying ADDRESS, so the scripts need no interface names
# (they differ between namespaces, where the backend names them, and VMs).
iface_of() {
    ip -o addr show | awk -v a="$1" '{split($4, x, "/"); if (x[1] == a) {print $2; exit}}'
}

# Pid files hold "PID STARTTIME": the start time (field 22 of /proc/PID/stat) guards against a
# recycled PID, and the network namespace check against a process of another node or lab.
_starttime() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# alive PID: exists and is not a zombie (a reparented zombie may wait seconds for its reaper).
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

# running NAME: succeeds when the process recorded for NAME is alive and is still ours.
running() {
    local file pid start
    file="$(node_dir)/pids/$1.pid"
    [ -f "$file" ] || return 1
    read -r pid start <"$file" || return 1
    [ -n "$pid" ] && alive "$pid" || return 1
    [ "$(_starttime "$pid")" = "$start" ] || return 1
    [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/self/ns/net)" ]
}

# start_bg NAME CMD...: start CMD in its own session, logging to logs/NAME.log, and record it.
# Idempotent: a recorded process that is still running is left alone.
start_bg() {
    local name=$1 dir pid
    shift
    dir=$(node_dir)
    mkdir -p "$dir/pids" "$dir/logs"
    if running "$name"; then
        log "$name already running (pid $(cut -d' ' -f1 "$dir/pids/$name.pid"))"
        return 0
    fi
    # vsftpd reports start-up errors on fd 0, so fd 0 goes to the log too.
    setsid "$@" 0>>"$dir/logs/$name.log" >>"$dir/logs/$name.log" 2>&1 &
    pid=$!
    echo "$pid $(_starttime "$pid")" >"$dir/pids/$name.pid"
    log "started $name (pid $pid)"
}

# stop_bg NAME: stop the recorded process (TERM, then KILL after 5 s) and forget it.
stop_bg() {
    local file pid i
    file="$(node_dir)/pids/$1.pid"
    [ -f "$file" ] || return 0
    if running "$1"; then
        read -r pid _ <"$file"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$file"
}

# wait_listen NAME PORT: wait (at most 10 s) until something listens on TCP PORT, else show
# the log of NAME and fail.
wait_listen() {
    local i
    for ((i = 0; i < 100; i++)); do
        if [ -n "$(ss -Hltn "sport = :$2")" ]; then return 0; fi
        running "$1" || break
        sleep 0.1
    done
    tail -n 20 "$(node_dir)/logs/$1.log" >&2 || true
    die "$1 is not listening on port $2"
}

# routes replace|del: route through the node named by route_via in the topology.
# LAB_ROUTE_VIA_IPV4/6 is that node's address on the network this node shares with it. On a VM
# whose default route must stay on the management interface, LAB_ROUTE_PREFIXES lists the
# prefixes to route instead ("default" when unset).
routes() {
    local op=$1 p
    for p in ${LAB_ROUTE_PREFIXES:-default}; do
        if [ -n "${LAB_ROUTE_VIA_IPV4:-}" ] && [[ $p != *:* ]]; then
            _route "$op" -4 "$p" "$LAB_ROUTE_VIA_IPV4"
        fi
        if [ -n "${LAB_ROUTE_VIA_IPV6:-}" ] && { [ "$p" = default ] || [[ $p == *:* ]]; }; then
            _route "$op" -6 "$p" "$LAB_ROUTE_VIA_IPV6"
        fi
    done
}

_route() {
    if [ "$1" = del ]; then
        ip "$2" route del "$3" via "$4" 2>/dev/null || true
    else
        ip "$2" route replace "$3" via "$4"
    fi
}
