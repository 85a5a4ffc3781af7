#!/bin/sh
# ftp-alg rule set for iptables and ip6tables (raw table, chain FTP_ALG).
# Rendered by `ftp-alg rules render --backend iptables`; `ftp-alg rules apply` runs
# the same commands. Usage: sh ftp-alg.iptables.sh apply|remove
#
# Why these rules:
# - Control-connection packets go to NFQUEUE in the raw table, before conntrack, in both
#   directions: to the control ports (PORT, EPRT) and from them (227, 229). The ALG changes the
#   length of those lines and shifts later seq/ack numbers itself, so conntrack must only ever
#   see the corrected numbers. Queued after conntrack (mangle FORWARD), the server's acks cover
#   bytes conntrack never saw: they are marked INVALID, not de-NATed, and the router sends RST.
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
# - iptables: the anchor rule comes before the NFQUEUE rule, because a packet accepted from the
#   queue continues at the next hook, not at the next rule. It matches every packet: in raw,
#   conntrack has not run (no --ctstate NEW), and the CT target's template is only used when
#   conntrack creates the connection, so later packets are unaffected.
# - With a queue range (--queue-balance), the kernel spreads connections by addresses as seen
#   before NAT, so the two directions of one connection can land on different queues: one
#   process must serve the whole range.
set -e

ftp_alg_check() {
	# refuse while the kernel ftp helper is attached: it would fight the ALG
	if { iptables-save -t raw; ip6tables-save -t raw; } 2>/dev/null | grep -Eq -- '--helper "?ftp(-[0-9]+)?"?( |$)'; then
		echo "ftp-alg: remove the rules using '-j CT --helper ftp' first" >&2
		exit 1
	fi
}

ftp_alg_apply() {
	iptables -w -t raw -N FTP_ALG 2>/dev/null || iptables -w -t raw -F FTP_ALG
	iptables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	iptables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t raw -A FTP_ALG -p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || iptables -w -t raw -I PREROUTING 1 -j FTP_ALG
	iptables -w -t raw -C OUTPUT -j FTP_ALG 2>/dev/null || iptables -w -t raw -I OUTPUT 1 -j FTP_ALG
	ip6tables -w -t raw -N FTP_ALG 2>/dev/null || ip6tables -w -t raw -F FTP_ALG
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || ip6tables -w -t raw -I PREROUTING 1 -j FTP_ALG
	ip6tables -w -t raw -C OUTPUT -j FTP_ALG 2>/dev/null || ip6tables -w -t raw -I OUTPUT 1 -j FTP_ALG
}

ftp_alg_remove() {
	while iptables -w -t raw -D PREROUTING -j FTP_ALG 2>/dev/null; do :; done
	while iptables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	if iptables -w -t raw -F FTP_ALG 2>/dev/null; then iptables -w -t raw -X FTP_ALG; fi
	while ip6tables -w -t raw -D PREROUTING -j FTP_ALG 2>/dev/null; do :; done
	while ip6tables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	if ip6tables -w -t raw -F FTP_ALG 2>/dev/null; then ip6tables -w -t raw -X FTP_ALG; fi
}

case "${1:-}" in
apply) ftp_alg_check; ftp_alg_apply ;;
remove) ftp_alg_remove ;;
*) echo "usage: $0 apply|remove" >&2; exit 2 ;;
esac
