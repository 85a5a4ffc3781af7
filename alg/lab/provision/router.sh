#!/usr/bin/env bash
# Provisions the lab's router: forwarding, MASQUERADE of everything leaving the public network
# (IPv4 and IPv6), a port forward (DNAT) of the public address's FTP ports to the inside
# server, and the FTP gateway in front of it all.
#
# Usage: router.sh up [MODE] | gateway MODE | down      (environment: see README.md)
#   MODE: none     plain NAT: active and passive FTP through it fail, which the lab shows
#         kernel   the kernel's ftp helper (nf_conntrack_ftp + nf_nat_ftp) attached in raw
#         ftp-alg  this project's gateway: `ftp-alg rules apply` + `ftp-alg run` (hook below)
# Idempotent: the lab's rules live in their own chains (LAB-*), flushed and refilled each time,
# so running `up` again or switching the gateway never stacks rules.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

need LAB_NODE LAB_STATE_DIR LAB_NAT_PUBLIC_NETWORK LAB_NAT_FORWARD_NODE LAB_NAT_FORWARD_NETWORK \
    LAB_NAT_FORWARD_PORTS LAB_FTP_VSFTPD_PORT LAB_FTP_PYFTPDLIB_PORT
FTP_ALG=${LAB_FTP_ALG:-ftp-alg}
DIR=$(node_dir)
OWN_PUBLIC4=$(var "LAB_${LAB_NODE}_${LAB_NAT_PUBLIC_NETWORK}_IPV4")
# with two routers the public address is the shared (virtual) one the active router holds
PUBLIC4=$(var "LAB_HA_VIRTUAL_${LAB_NAT_PUBLIC_NETWORK}_IPV4")
PUBLIC6=$(var "LAB_HA_VIRTUAL_${LAB_NAT_PUBLIC_NETWORK}_IPV6")
PUBLIC4=${PUBLIC4:-$OWN_PUBLIC4}
PUBLIC6=${PUBLIC6:-$(var "LAB_${LAB_NODE}_${LAB_NAT_PUBLIC_NETWORK}_IPV6")}
INSIDE4=$(var "LAB_${LAB_NAT_FORWARD_NODE}_${LAB_NAT_FORWARD_NETWORK}_IPV4")
INSIDE6=$(var "LAB_${LAB_NAT_FORWARD_NODE}_${LAB_NAT_FORWARD_NETWORK}_IPV6")
HELPER_PORTS="$LAB_FTP_VSFTPD_PORT $LAB_FTP_PYFTPDLIB_PORT"
[ -n "$PUBLIC4" ] && [ -n "$INSIDE4" ] || die "no public or inside address in the environment"
# shellcheck source=router-ha.sh
. "$here/router-ha.sh"

# ipt 4|6 ARGS...: iptables or ip6tables, waiting for the xtables lock.
ipt() {
    local fam=$1
    shift
    if [ "$fam" = 4 ]; then iptables -w "$@"; else ip6tables -w "$@"; fi
}

# own_chain FAM TABLE CHAIN PARENT: create (or empty) CHAIN and make PARENT jump to it first.
own_chain() {
    ipt "$1" -t "$2" -N "$3" 2>/dev/null || ipt "$1" -t "$2" -F "$3"
    ipt "$1" -t "$2" -C "$4" -j "$3" 2>/dev/null || ipt "$1" -t "$2" -I "$4" 1 -j "$3"
}

drop_chain() {
    local i
    for ((i = 0; i < 100; i++)); do ipt "$1" -t "$2" -D "$4" -j "$3" 2>/dev/null || break; done
    ipt "$1" -t "$2" -F "$3" 2>/dev/null || true
    ipt "$1" -t "$2" -X "$3" 2>/dev/null || true
}

nat_rules() {
    local wan fam pub inside port
    wan=$(iface_of "$OWN_PUBLIC4")
    [ -n "$wan" ] || die "no interface carries the public address $OWN_PUBLIC4"
    for fam in 4 6; do
        if [ "$fam" = 4 ]; then pub=$PUBLIC4 inside=$INSIDE4; else pub=$PUBLIC6 inside="[$INSIDE6]"; fi
        [ -n "$pub" ] && [ "$inside" != "[]" ] || continue
        own_chain "$fam" nat LAB-MASQ POSTROUTING
        if [ "${LAB_NAT_MASQUERADE:-1}" = 1 ]; then
            ipt "$fam" -t nat -A LAB-MASQ -o "$wan" -j MASQUERADE
        else # SNAT to the shared address: its entries survive the WAN link going down
            ipt "$fam" -t nat -A LAB-MASQ -o "$wan" -j SNAT --to-source "$pub"
        fi
        own_chain "$fam" nat LAB-FORWARD PREROUTING
        for port in $LAB_NAT_FORWARD_PORTS; do
            ipt "$fam" -t nat -A LAB-FORWARD -d "$pub" -p tcp --dport "$port" \
                -j DNAT --to-destination "$inside:$port"
        done
    done
}

# The kernel helper must be attached in raw PREROUTING, before DNAT: matching the port alone
# catches both the client's connections to outside servers and the outside clients'
# connections to the public address (the port forward), as they arrive.
kernel_helper_rules() {
    local fam port
    for fam in 4 6; do
        for port in $HELPER_PORTS; do
            ipt "$fam" -t raw -A LAB-HELPER -p tcp --dport "$port" -j CT --helper ftp
        done
    done
}

# --- ftp-alg gateway ----------------------------------------------------------------------
# The rule set (`ftp-alg rules apply`), then the daemon. It is ready when its status socket
# answers (the socket opens after the queue is bound); if it never does, the switch fails
# loudly and its rules are removed again.
alg_status() {
    "$FTP_ALG" status --status-socket "$DIR/ftp-alg-status.sock" >/dev/null 2>&1
}

alg_gateway_start() {
    local ports=${HELPER_PORTS// /,} config=()
    # the daemon's config beside the router's state may declare FTPS ranges (rules_ftps.py)
    [ -f "$DIR/ftp-alg.toml" ] && config=(--config "$DIR/ftp-alg.toml")
    touch "$DIR/ftp-alg-rules.applied"
    "$FTP_ALG" rules apply --ports "$ports" "${config[@]}" || {
        alg_gateway_stop
        die "ftp-alg rules apply --ports $ports failed"
    }
    alg_daemon_start || {
        alg_gateway_stop
        die "ftp-alg run did not become ready (log above); its rules were removed again"
    }
}

# The daemon alone (rules and conntrack untouched): `daemon start|stop` restarts it the way
# an upgrade or `systemctl restart` would, mid-session.
alg_daemon_start() {
    local ports=${HELPER_PORTS// /,} i
    # the status socket per lab: the default path is shared by every namespace on the machine
    # A config file beside the router's state (e.g. from `ftp-alg lab bench --daemon-config`)
    # is passed on; the command-line options below still win.
    local config=()
    [ -f "$DIR/ftp-alg.toml" ] && config=(--config "$DIR/ftp-alg.toml")
    # /metrics on the router's own loopback (each namespace has its own 127.0.0.1)
    start_bg ftp-alg "$FTP_ALG" run "${config[@]}" --queue-num 0 --ports "$ports" \
        --status-socket "$DIR/ftp-alg-status.sock" --metrics-listen 127.0.0.1:9477
    for ((i = 0; i < 50; i++)); do
        alg_status && return 0
        running ftp-alg || break
        sleep 0.1
    done
    tail -n 20 "$DIR/logs/ftp-alg.log" >&2 || true
    return 1
}

daemon() {
    case "$1" in
        start) alg_daemon_start || die "ftp-alg run did not become ready (log above)" ;;
        stop) stop_bg ftp-alg ;;
        *) die "usage: $0 daemon start|stop" ;;
    esac
}

alg_gateway_stop() {
    stop_bg ftp-alg
    if [ -f "$DIR/ftp-alg-rules.applied" ]; then
        "$FTP_ALG" rules remove --ports "${HELPER_PORTS// /,}" ||
            log "warning: ftp-alg rules remove failed; its rules may still be in place"
        rm -f "$DIR/ftp-alg-rules.applied"
    fi
}
# -------------------------------------------------------------------------------------------

# gateway MODE: switch the gateway. Connection tracking is flushed so that connections made
# under the previous mode (with or without a helper) do not blur the next test.
gateway() {
    local mode=$1 fam
    case "$mode" in none | kernel | ftp-alg) ;; *) die "unknown gateway mode '$mode'" ;; esac
    alg_gateway_stop
    for fam in 4 6; do own_chain "$fam" raw LAB-HELPER PREROUTING; done
    conntrack -F >/dev/null 2>&1 || true
    echo none >"$DIR/gateway-mode" # what the router is now, should the switch below fail
    case "$mode" in
        kernel) kernel_helper_rules ;;
        ftp-alg) alg_gateway_start ;;
    esac
    echo "$mode" >"$DIR/gateway-mode"
    log "gateway: $mode"
}

up() {
    mkdir -p "$DIR/logs"
    sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    nat_rules
    if ha_on; then ha_up; fi
    gateway "${1:-${LAB_GATEWAY_MODE:-none}}"
}

down() {
    local fam
    alg_gateway_stop
    if ha_on; then ha_down; fi
    for fam in 4 6; do
        drop_chain "$fam" raw LAB-HELPER PREROUTING
        drop_chain "$fam" nat LAB-FORWARD PREROUTING
        drop_chain "$fam" nat LAB-MASQ POSTROUTING
    done
    rm -f "$DIR/gateway-mode"
}

case "${1:-up}" in
    up) up "${2:-}" ;;
    gateway) gateway "${2:?usage: $0 gateway none|kernel|ftp-alg}" ;;
    daemon) daemon "${2:?usage: $0 daemon start|stop}" ;;
    down) down ;;
    crash) crash ;;
    takeover) takeover ;;
    notify) notify "${2:-}" ;;
    *) die "usage: $0 up [MODE] | gateway MODE | daemon start|stop | crash | takeover | notify STATE | down" ;;
esac
