#!/bin/sh
# ftp-alg rule set for iptables and ip6tables, in chains of its own:
#   raw table, chain FTP_ALG, jumped to from PREROUTING
#   raw table, chain FTP_ALG_OUT, jumped to from OUTPUT
#   mangle table, chain FTP_ALG, jumped to from POSTROUTING
# Rendered by `ftp-alg rules render --backend iptables`; `ftp-alg rules apply` runs
# the same commands. Usage: sh ftp-alg.iptables.sh apply|remove
#
# Why these rules:
# - The ALG changes the length of PORT/EPRT lines (client -> server) and 227/229 lines
#   (server -> client) and shifts every later seq and ack itself, so from the first such
#   rewrite on, client and server number the same bytes differently. conntrack checks each
#   packet's ack against the data it has seen going the other way, so it must see the whole
#   control connection in ONE sequence space. These rules make that the client's:
#   - packets to the control ports (client -> server, conntrack's original direction) go to
#     NFQUEUE in mangle POSTROUTING, after conntrack has tracked them exactly as the client
#     sent them (and before SNAT). The ALG rewrites them and shifts them into the server's
#     numbering there, where conntrack no longer looks.
#   - packets from the control ports (server -> client, the reply direction) go to NFQUEUE in
#     raw PREROUTING, before conntrack. The ALG rewrites 227/229 and maps their seq and ack
#     into the client's numbering there, so conntrack sees them as the client will.
# - Queueing both directions in raw, before conntrack, is wrong: conntrack then sees every
#   packet in the numbering of its receiver, the client's rewritten data in the server's and
#   the server's acks for it in the client's (likewise for 227/229 the other way). After a
#   rewrite that shortens a line, the acks lie beyond anything conntrack saw sent ("ACK over
#   upper bound"): they are marked INVALID, not de-NATed, and the router answers with RST. A
#   lengthening rewrite only makes the acks lag behind, which conntrack tolerates, so the fault
#   hides there. Queueing both after conntrack (mangle FORWARD) mixes the numberings the other
#   way round and fails on lengthening rewrites.
# - The router's own FTP clients: their packets pass mangle POSTROUTING too and the replies
#   come in through PREROUTING, so raw OUTPUT queues nothing (that would queue them twice); it
#   only attaches the anchor. Connections to an FTP server on the router itself are not queued
#   at all (their client packets never reach POSTROUTING): no NAT stands between the two ends.
# - In mangle POSTROUTING a port-forwarded (DNATed) control connection already shows the inside
#   server's address and port, as its replies do in raw PREROUTING: if a port forward changes
#   the port, list both the public and the inside port.
# - --queue-bypass (nft: bypass): when the daemon is not running, FTP passes unchanged instead
#   of being dropped.
# - The kernel creates an expectation (ctnetlink EXP_NEW) only for a connection that has a
#   conntrack helper, and this kernel has no user-space helpers (nfnetlink_cthelper). The `sane`
#   helper only parses the SANE scanner protocol's binary requests, never FTP text, so it serves
#   as an inert anchor. Never attach the `ftp` helper as well: it would rewrite and expect on
#   its own, behind the ALG's back.
# - The anchor matches the destination port as packets arrive, before DNAT, so port-forwarded
#   control connections (server behind the router) get it too; a rule on the inside address
#   would never match.
# - iptables: in raw the anchor rule comes before the NFQUEUE rule, because a packet accepted
#   from the queue continues at the next hook, not at the next rule. It matches every packet:
#   in raw, conntrack has not run (no --ctstate NEW), and the CT target's template is only used
#   when conntrack creates the connection, so later packets are unaffected.
# - With a queue range (--queue-balance), the kernel spreads packets by their addresses where
#   they are queued; the two directions are queued on different sides of NAT, so one
#   connection's packets can land on different queues: one process must serve the whole
#   range.
set -e

ftp_alg_check() {
	# refuse while the kernel ftp helper is attached: it would fight the ALG
	if { iptables-save -t raw; ip6tables-save -t raw; } 2>/dev/null | grep -Eq -- '--helper "?ftp(-[0-9]+)?"?( |$)'; then
		echo "ftp-alg: remove the rules using '-j CT --helper ftp' first" >&2
		exit 1
	fi
}

ftp_alg_apply() {
	while iptables -w -t raw -D PREROUTING -j FTP_ALG_OUT 2>/dev/null; do :; done
	while iptables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	iptables -w -t raw -N FTP_ALG 2>/dev/null || iptables -w -t raw -F FTP_ALG
	iptables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	iptables -w -t raw -A FTP_ALG -p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || iptables -w -t raw -I PREROUTING 1 -j FTP_ALG
	iptables -w -t raw -N FTP_ALG_OUT 2>/dev/null || iptables -w -t raw -F FTP_ALG_OUT
	iptables -w -t raw -A FTP_ALG_OUT -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	iptables -w -t raw -C OUTPUT -j FTP_ALG_OUT 2>/dev/null || iptables -w -t raw -I OUTPUT 1 -j FTP_ALG_OUT
	iptables -w -t mangle -N FTP_ALG 2>/dev/null || iptables -w -t mangle -F FTP_ALG
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t mangle -C POSTROUTING -j FTP_ALG 2>/dev/null || iptables -w -t mangle -I POSTROUTING 1 -j FTP_ALG
	while ip6tables -w -t raw -D PREROUTING -j FTP_ALG_OUT 2>/dev/null; do :; done
	while ip6tables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	ip6tables -w -t raw -N FTP_ALG 2>/dev/null || ip6tables -w -t raw -F FTP_ALG
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || ip6tables -w -t raw -I PREROUTING 1 -j FTP_ALG
	ip6tables -w -t raw -N FTP_ALG_OUT 2>/dev/null || ip6tables -w -t raw -F FTP_ALG_OUT
	ip6tables -w -t raw -A FTP_ALG_OUT -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	ip6tables -w -t raw -C OUTPUT -j FTP_ALG_OUT 2>/dev/null || ip6tables -w -t raw -I OUTPUT 1 -j FTP_ALG_OUT
	ip6tables -w -t mangle -N FTP_ALG 2>/dev/null || ip6tables -w -t mangle -F FTP_ALG
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t mangle -C POSTROUTING -j FTP_ALG 2>/dev/null || ip6tables -w -t mangle -I POSTROUTING 1 -j FTP_ALG
}

ftp_alg_remove() {
	while iptables -w -t raw -D PREROUTING -j FTP_ALG 2>/dev/null; do :; done
	while iptables -w -t raw -D PREROUTING -j FTP_ALG_OUT 2>/dev/null; do :; done
	while iptables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	while iptables -w -t raw -D OUTPUT -j FTP_ALG_OUT 2>/dev/null; do :; done
	while iptables -w -t mangle -D POSTROUTING -j FTP_ALG 2>/dev/null; do :; done
	if iptables -w -t raw -F FTP_ALG 2>/dev/null; then iptables -w -t raw -X FTP_ALG; fi
	if iptables -w -t raw -F FTP_ALG_OUT 2>/dev/null; then iptables -w -t raw -X FTP_ALG_OUT; fi
	if iptables -w -t mangle -F FTP_ALG 2>/dev/null; then iptables -w -t mangle -X FTP_ALG; fi
	if iptables -V | grep -q nf_tables && ! iptables -w -t mangle -S | grep -qv '^-P .* ACCEPT$'; then nft delete table ip mangle; fi
	if iptables -V | grep -q nf_tables && ! iptables -w -t raw -S | grep -qv '^-P .* ACCEPT$'; then nft delete table ip raw; fi
	while ip6tables -w -t raw -D PREROUTING -j FTP_ALG 2>/dev/null; do :; done
	while ip6tables -w -t raw -D PREROUTING -j FTP_ALG_OUT 2>/dev/null; do :; done
	while ip6tables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	while ip6tables -w -t raw -D OUTPUT -j FTP_ALG_OUT 2>/dev/null; do :; done
	while ip6tables -w -t mangle -D POSTROUTING -j FTP_ALG 2>/dev/null; do :; done
	if ip6tables -w -t raw -F FTP_ALG 2>/dev/null; then ip6tables -w -t raw -X FTP_ALG; fi
	if ip6tables -w -t raw -F FTP_ALG_OUT 2>/dev/null; then ip6tables -w -t raw -X FTP_ALG_OUT; fi
	if ip6tables -w -t mangle -F FTP_ALG 2>/dev/null; then ip6tables -w -t mangle -X FTP_ALG; fi
	if ip6tables -V | grep -q nf_tables && ! ip6tables -w -t mangle -S | grep -qv '^-P .* ACCEPT$'; then nft delete table ip6 mangle; fi
	if ip6tables -V | grep -q nf_tables && ! ip6tables -w -t raw -S | grep -qv '^-P .* ACCEPT$'; then nft delete table ip6 raw; fi
}

case "${1:-}" in
apply) ftp_alg_check; ftp_alg_apply ;;
remove) ftp_alg_remove ;;
*) echo "usage: $0 apply|remove" >&2; exit 2 ;;
esac
