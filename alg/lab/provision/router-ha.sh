# shellcheck shell=bash
# The failover half of router.sh (sourced by it when the topology names two routers: see
# ../topology-ha.json): conntrackd replicating the conntrack table over the sync link, the
# virtual addresses the active router holds, a crash that kills the box's daemons and links,
# and the standby's takeover.
#
#   router.sh up MODE     also starts conntrackd and keepalived (keepalived.sh), which gives the
#                         active router the virtual addresses
#   router.sh crash       SIGKILL keepalived, ftp-alg and conntrackd, then every link down (a
#                         dead box sends no DESTROY events, so the standby's cache keeps every
#                         connection, and no VRRP resignation)
#   router.sh notify STATE  keepalived's notify script: on "master", commit conntrackd's cache
#                         (connections, then expectations) and, under ftp-alg, repair the
#                         expectations conntrackd recreated without their NAT part
#   router.sh takeover    the same by hand, addresses included, where keepalived is missing or
#                         LAB_HA_KEEPALIVED=0
#
# LAB_HA_ACTIVE (set by the backend to the active router's name) decides who is MASTER at `up`.

ha_on() { [ -n "${LAB_HA_ROUTERS:-}" ]; }
use_keepalived() { [ "${LAB_HA_KEEPALIVED:-1}" = 1 ] && command -v keepalived >/dev/null; }
# shellcheck source=keepalived.sh
. "$here/keepalived.sh"

ha_peer() {
    local r
    for r in $LAB_HA_ROUTERS; do [ "$r" = "$LAB_NODE" ] || printf '%s' "$r"; done
}

# conntrackd's own files live in the node's state directory: several labs (and the host) can
# run conntrackd at once only with their own LockFile and UNIX socket.
CTD_CONF="$DIR/conntrackd.conf"
ctd() { conntrackd -C "$CTD_CONF" "$@"; }

conntrackd_config() {
    local net=$LAB_HA_SYNC_NETWORK peer me them
    peer=$(ha_peer)
    me=$(var "LAB_${LAB_NODE}_${net}_IPV4")
    them=$(var "LAB_${peer}_${net}_IPV4")
    cat >"$CTD_CONF" <<CONF
# conntrackd for the ftp-alg failover lab: FTFW (reliable) replication over UDP on the
# dedicated sync link, event mode, expectations too.
Sync {
    Mode FTFW {
        DisableExternalCache Off
    }
    UDP {
        IPv4_address $me
        IPv4_Destination_Address $them
        Port 3780
        Interface $(iface_of "$me")
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }
    Options {
        ExpectationSync On
    }
}
General {
    HashSize 8192
    HashLimit 65536
    LogFile $DIR/logs/conntrackd-internal.log
    Syslog off
    LockFile $DIR/conntrackd.lock
    UNIX {
        Path $DIR/conntrackd.ctl
    }
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Systemd off
    Filter From Userspace {
        Protocol Accept {
            TCP
        }
    }
}
CONF
}

conntrackd_start() {
    local i
    conntrackd_config
    rm -f "$DIR/conntrackd.lock" # a SIGKILLed conntrackd leaves it behind
    start_bg conntrackd conntrackd -C "$CTD_CONF"
    for ((i = 0; i < 50; i++)); do
        [ -S "$DIR/conntrackd.ctl" ] && ctd -s >/dev/null 2>&1 && return 0
        running conntrackd || break
        sleep 0.1
    done
    tail -n 20 "$DIR/logs/conntrackd.log" "$DIR/logs/conntrackd-internal.log" >&2 || true
    die "conntrackd did not start"
}

# ha_addresses add|del: the virtual addresses, on the interface of this router's own address
# on each network (nodad: usable at once, as keepalived's are).
ha_addresses() {
    local op=$1 net up if4 v4 v6 len4 len6
    for net in lan dmz wan; do
        v4=$(var "LAB_HA_VIRTUAL_${net}_IPV4")
        [ -n "$v4" ] || continue
        v6=$(var "LAB_HA_VIRTUAL_${net}_IPV6")
        up=$(var "LAB_${LAB_NODE}_${net}_IPV4")
        if4=$(iface_of "$up")
        [ -n "$if4" ] || die "no interface carries $up"
        len4=$(var "LAB_NET_${net}_IPV4")
        len6=$(var "LAB_NET_${net}_IPV6")
        if [ "$op" = add ]; then
            ip addr replace "$v4/${len4#*/}" dev "$if4"
            ip -6 addr replace "$v6/${len6#*/}" dev "$if4" nodad
            # gratuitous ARP: the neighbours learn the new owner of the address at once
            if command -v arping >/dev/null; then
                arping -q -U -c 1 -w 0 -i "$if4" -S "$v4" "$v4" >/dev/null 2>&1 || true
            fi
        else
            ip addr del "$v4/${len4#*/}" dev "$if4" 2>/dev/null || true
            ip -6 addr del "$v6/${len6#*/}" dev "$if4" 2>/dev/null || true
        fi
    done
}

ha_up() {
    conntrackd_start
    if use_keepalived; then
        keepalived_start
    elif [ "${LAB_HA_ACTIVE:-}" = "$LAB_NODE" ]; then
        ha_addresses add
        echo "master $(date +%s.%N)" >"$DIR/ha-state"
    fi
    [ "${LAB_HA_ACTIVE:-}" = "$LAB_NODE" ] && log "active: holds the virtual addresses"
    return 0
}

ha_down() {
    stop_bg keepalived
    stop_bg conntrackd
    rm -f "$DIR/conntrackd.lock" "$DIR/conntrackd.ctl"
}

# kill_bg NAME: SIGKILL the recorded process, as a crash or power loss would end it.
kill_bg() {
    local pid
    if running "$1"; then
        read -r pid _ <"$(node_dir)/pids/$1.pid"
        kill -KILL "$pid" 2>/dev/null || true
        log "killed $1 (pid $pid)"
    fi
}

crash() {
    local ifc
    keepalived_crash
    kill_bg ftp-alg
    kill_bg conntrackd
    for ifc in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        [ "$ifc" = lo ] || ip link set "$ifc" down
    done
    log "crashed: daemons killed, links down"
}

takeover() {
    ha_addresses add
    ha_commit
}

# notify STATE: what keepalived calls; ha-state records the last state and when it was reached
notify() {
    case "$1" in
        master) ha_commit ;;
        backup | fault) echo "$1 $(date +%s.%N)" >"$DIR/ha-state" ;;
        *) die "usage: $0 notify master|backup|fault" ;;
    esac
}

# ms A B: milliseconds from A to B, both values of $EPOCHREALTIME
ms() { echo $(((${2/./} - ${1/./}) / 1000)); }

ha_commit() {
    local i mode t0=$EPOCHREALTIME t1 t2
    ctd -c || die "conntrackd -c (commit) failed"
    t1=$EPOCHREALTIME
    # the commit of the connections runs on in a child: the expectations' commit is refused
    # until it is done, so it is retried (bounded)
    for ((i = 0; i < 50; i++)); do
        ctd -c expect >/dev/null 2>&1 && break
        sleep 0.1
    done
    ((i < 50)) || log "warning: conntrackd -c expect was refused"
    t2=$EPOCHREALTIME
    mode=$(cat "$DIR/gateway-mode" 2>/dev/null || echo none)
    if [ "$mode" = ftp-alg ]; then
        "$FTP_ALG" ha repair-expectations || log "warning: expectation repair failed"
    fi
    echo "master $(date +%s.%N)" >"$DIR/ha-state"
    log "took over: commit $(ms "$t0" "$t1") ms, expectations $(ms "$t1" "$t2") ms" \
        "($((i + 1)) tries), repair $(ms "$t2" "$EPOCHREALTIME") ms"
}
