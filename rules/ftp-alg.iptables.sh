#!/bin/sh
# ftp-alg rule set for iptables and ip6tables, in chains of its own:
#   raw table, chain FTP_ALG, jumped to from PREROUTING
#   raw table, chain FTP_ALG_OUT, jumped to from OUTPUT
#   mangle table, chain FTP_ALG, jumped to from POSTROUTING
# Rendered by `ftp-alg rules render --backend iptables`; `ftp-alg rules apply` runs
# the same commands. Usage: sh ftp-alg.iptables.sh apply|remove
#
# Why these rules:
# - The kernel holds the sequence state. When ftp-alg changes the length of a PORT/EPRT line
#   (client -> server) or a 227/229 line (server -> client), it writes the correction into the
#   connection's conntrack seqadj record (ctnetlink, CTA_SEQ_ADJ_ORIG/REPLY) before the
#   segment's verdict. From then on conntrack shifts seq, ack and SACK of every later packet
#   itself, at the end of POSTROUTING, and its window tracking allows for the shift. A
#   restarted daemon reads the record back; conntrackd carries it to a standby router.
# - So only segments that carry payload go to the queue: pure ACKs, SYNs and FINs without data
#   never leave the kernel (the -m bpf program compares the IP length with the headers').
# - Nor do lines nobody needs: a segment of whole lines that holds no address, passive,
#   transfer or AUTH word (nor 227/228/229/234/421) passes the queue (RETURN) when it starts
#   with a plain single-line reply (200, 150, 226, 550, ...), or with a login verb (USER, PASS,
#   SYST, TYPE, ...) while its connection lacks the watch bit in its connmark (watch_mark).
#   ftp-alg sets the bit when it starts watching a connection (ctnetlink), so from then on
#   every command is queued. (iptables only: nft has no match for a segment's last byte, so
#   the nft rule set queues these lines too.)
# - Both directions are queued in mangle POSTROUTING: after conntrack, so conntrack sees every
#   packet as its sender sent it (one consistent numbering per direction), and before SNAT
#   and before the shift, so ftp-alg sees inside addresses and the sender's numbers. A reply
#   from a port-forwarded server is queued there before its un-DNAT.
# - Only ESTABLISHED connections enter the queue (conntrack has seen both directions): junk,
#   INVALID and untracked packets, and one-way floods that conntrack's loose pick-up tracks as
#   NEW, never reach ftp-alg and cannot fill its queue. (`-m helper` cannot test the anchor: it
#   matches a connection's master's helper.) A queued connection without the anchor (one that
#   began before the rules were applied) is passed untouched by ftp-alg: without the anchor
#   the kernel would neither keep its seqadj record nor accept its expectations.
# - The kernel creates an expectation (ctnetlink EXP_NEW) and keeps a seqadj record only for a
#   connection that has a conntrack helper, and this kernel has no user-space helpers
#   (nfnetlink_cthelper). The `sane` helper only parses the SANE scanner protocol's binary
#   requests, never FTP text, so it serves as an inert anchor. Never attach the `ftp` helper as
#   well: it would rewrite and expect on its own, behind the ALG's back.
# - The anchor matches the destination port as packets arrive, before DNAT, so port-forwarded
#   control connections (server behind the router) get it too; a rule on the inside address
#   would never match. It is attached in raw, before conntrack creates the connection: the CT
#   target's template is only used then, so later packets are unaffected.
# - In mangle POSTROUTING a port-forwarded (DNATed) control connection already shows the inside
#   server's port: if a port forward changes the port, list both the public and the inside port.
# - The router's own FTP clients: their packets pass mangle POSTROUTING too; raw OUTPUT only
#   attaches the anchor. Connections to an FTP server on the router itself are not queued at
#   all (their packets never reach POSTROUTING): no NAT stands between the two ends.
# - --queue-bypass (nft: bypass): when the daemon is not running, FTP passes unchanged instead
#   of being dropped, and the kernel still applies the offsets already written.
# - With a queue range (--queue-balance), the kernel spreads packets by their addresses; one
#   process must serve the whole range (the two directions may hash to different queues).
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
	iptables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || iptables -w -t raw -I PREROUTING 1 -j FTP_ALG
	iptables -w -t raw -N FTP_ALG_OUT 2>/dev/null || iptables -w -t raw -F FTP_ALG_OUT
	iptables -w -t raw -A FTP_ALG_OUT -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	iptables -w -t raw -C OUTPUT -j FTP_ALG_OUT 2>/dev/null || iptables -w -t raw -I OUTPUT 1 -j FTP_ALG_OUT
	iptables -w -t mangle -N FTP_ALG 2>/dev/null || iptables -w -t mangle -F FTP_ALG
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '21,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 10 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 6 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 3 0 1885434742,21 2 0 1701868406,21 1 0 1819308918,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j CONNMARK --set-xmark 0x2000000/0x6000000
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '21,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 10 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 6 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 3 0 1885434742,21 2 0 1701868406,21 1 0 1819308918,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j RETURN
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x2000000/0x7000000 -m bpf --bytecode '20,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 9 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 5 10,97 0 0 0,64 0 0 0,21 3 0 842151712,21 2 0 842151968,21 1 0 842152224,6 0 0 0,6 0 0 1' -m string ! --string 234 --algo bm --icase -m string ! --string 421 --algo bm --icase -j RETURN
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x6000000/0x7000000 -m bpf --bytecode '25,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j CONNMARK --set-xmark 0x0/0x2000000
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x2000000/0x7000000 -m bpf --bytecode '25,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j CONNMARK --set-xmark 0x4000000/0x4000000
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x6000000/0x7000000 -m bpf --bytecode '25,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j RETURN
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '31,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 20 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 16 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 13 0 1970496882,21 12 0 1885434739,21 11 0 1633903476,21 10 0 1937339252,21 9 0 1954115685,21 8 0 1836016741,21 7 0 1937011317,21 6 0 1852796784,21 5 0 1869640819,21 4 0 1667528048,21 3 0 2020636516,21 2 0 1668768800,21 1 0 1903520116,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j RETURN
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '49,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,7 0 0 0,40 0 0 2,45 0 38 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 34 10,97 0 0 0,64 0 0 0,21 32 0 842149920,21 31 0 842215456,21 30 0 858992928,21 29 0 858993184,21 28 0 842085664,21 27 0 842018848,21 26 0 842019360,21 25 0 842346528,21 24 0 842348320,21 23 0 825569312,21 22 0 825373984,21 21 0 842151456,21 20 0 842151200,21 19 0 859123744,21 18 0 842085152,21 17 0 842084640,21 16 0 842084896,21 15 0 842085408,21 14 0 842150176,21 13 0 875705632,21 12 0 875705888,21 11 0 875900960,21 10 0 875901216,21 9 0 875901472,21 8 0 892350496,21 7 0 892350752,21 6 0 892351008,21 5 0 892351264,21 4 0 892351520,21 3 0 892547104,21 2 0 892678176,21 1 0 892678944,6 0 0 0,6 0 0 1' -m string ! --string 227 --algo bm --icase -m string ! --string 228 --algo bm --icase -m string ! --string 229 --algo bm --icase -m string ! --string 234 --algo bm --icase -m string ! --string 421 --algo bm --icase -j RETURN
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '10,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,45 0 1 0,6 0 0 1,6 0 0 0' -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '10,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,45 0 1 0,6 0 0 1,6 0 0 0' -j NFQUEUE --queue-num 0 --queue-bypass
	iptables -w -t mangle -C POSTROUTING -j FTP_ALG 2>/dev/null || iptables -w -t mangle -I POSTROUTING 1 -j FTP_ALG
	while iptables -w -t nat -D PREROUTING -j FTP_ALG_FTPS 2>/dev/null; do :; done
	if iptables -w -t nat -F FTP_ALG_FTPS 2>/dev/null; then iptables -w -t nat -X FTP_ALG_FTPS; fi
	while ip6tables -w -t raw -D PREROUTING -j FTP_ALG_OUT 2>/dev/null; do :; done
	while ip6tables -w -t raw -D OUTPUT -j FTP_ALG 2>/dev/null; do :; done
	ip6tables -w -t raw -N FTP_ALG 2>/dev/null || ip6tables -w -t raw -F FTP_ALG
	ip6tables -w -t raw -A FTP_ALG -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	ip6tables -w -t raw -C PREROUTING -j FTP_ALG 2>/dev/null || ip6tables -w -t raw -I PREROUTING 1 -j FTP_ALG
	ip6tables -w -t raw -N FTP_ALG_OUT 2>/dev/null || ip6tables -w -t raw -F FTP_ALG_OUT
	ip6tables -w -t raw -A FTP_ALG_OUT -p tcp -m multiport --dports 21,2121 -j CT --helper sane
	ip6tables -w -t raw -C OUTPUT -j FTP_ALG_OUT 2>/dev/null || ip6tables -w -t raw -I OUTPUT 1 -j FTP_ALG_OUT
	ip6tables -w -t mangle -N FTP_ALG 2>/dev/null || ip6tables -w -t mangle -F FTP_ALG
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '23,48 0 0 6,21 0 19 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 10 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 6 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 3 0 1885434742,21 2 0 1701868406,21 1 0 1819308918,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j CONNMARK --set-xmark 0x2000000/0x6000000
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '23,48 0 0 6,21 0 19 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 10 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 6 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 3 0 1885434742,21 2 0 1701868406,21 1 0 1819308918,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j RETURN
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x2000000/0x7000000 -m bpf --bytecode '22,48 0 0 6,21 0 18 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 9 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 5 10,97 0 0 0,64 0 0 0,21 3 0 842151712,21 2 0 842151968,21 1 0 842152224,6 0 0 0,6 0 0 1' -m string ! --string 234 --algo bm --icase -m string ! --string 421 --algo bm --icase -j RETURN
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x6000000/0x7000000 -m bpf --bytecode '27,48 0 0 6,21 0 23 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j CONNMARK --set-xmark 0x0/0x2000000
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x2000000/0x7000000 -m bpf --bytecode '27,48 0 0 6,21 0 23 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j CONNMARK --set-xmark 0x4000000/0x4000000
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m conntrack ! --ctstate DNAT -m connmark --mark 0x6000000/0x7000000 -m bpf --bytecode '27,48 0 0 6,21 0 23 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 14 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 10 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 7 0 1919251570,21 6 0 1937010546,21 5 0 1937010549,21 4 0 1634758757,21 3 0 1818850164,21 2 0 1852601204,21 1 0 1835823972,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --hex-string '|0a72657472|' --algo bm --icase -m string ! --hex-string '|0a73746f72|' --algo bm --icase -m string ! --hex-string '|0a73746f75|' --algo bm --icase -m string ! --hex-string '|0a61707065|' --algo bm --icase -m string ! --hex-string '|0a6c697374|' --algo bm --icase -m string ! --hex-string '|0a6e6c7374|' --algo bm --icase -m string ! --hex-string '|0a6d6c7364|' --algo bm --icase -j RETURN
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m connmark --mark 0x0/0x1000000 -m bpf --bytecode '33,48 0 0 6,21 0 29 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 20 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 16 10,97 0 0 0,64 0 0 0,68 0 0 538976288,21 13 0 1970496882,21 12 0 1885434739,21 11 0 1633903476,21 10 0 1937339252,21 9 0 1954115685,21 8 0 1836016741,21 7 0 1937011317,21 6 0 1852796784,21 5 0 1869640819,21 4 0 1667528048,21 3 0 2020636516,21 2 0 1668768800,21 1 0 1903520116,6 0 0 0,6 0 0 1' -m string ! --string PORT --algo bm --icase -m string ! --string EPRT --algo bm --icase -m string ! --string LPRT --algo bm --icase -m string ! --string PASV --algo bm --icase -m string ! --string EPSV --algo bm --icase -m string ! --string LPSV --algo bm --icase -m string ! --string AUTH --algo bm --icase -m string ! --string RETR --algo bm --icase -m string ! --string STOR --algo bm --icase -m string ! --string STOU --algo bm --icase -m string ! --string APPE --algo bm --icase -m string ! --string LIST --algo bm --icase -m string ! --string NLST --algo bm --icase -m string ! --string MLSD --algo bm --icase -j RETURN
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '51,48 0 0 6,21 0 47 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,2 0 0 0,7 0 0 0,40 0 0 4,4 0 0 40,45 0 38 0,20 0 0 1,7 0 0 0,80 0 0 0,21 0 34 10,97 0 0 0,64 0 0 0,21 32 0 842149920,21 31 0 842215456,21 30 0 858992928,21 29 0 858993184,21 28 0 842085664,21 27 0 842018848,21 26 0 842019360,21 25 0 842346528,21 24 0 842348320,21 23 0 825569312,21 22 0 825373984,21 21 0 842151456,21 20 0 842151200,21 19 0 859123744,21 18 0 842085152,21 17 0 842084640,21 16 0 842084896,21 15 0 842085408,21 14 0 842150176,21 13 0 875705632,21 12 0 875705888,21 11 0 875900960,21 10 0 875901216,21 9 0 875901472,21 8 0 892350496,21 7 0 892350752,21 6 0 892351008,21 5 0 892351264,21 4 0 892351520,21 3 0 892547104,21 2 0 892678176,21 1 0 892678944,6 0 0 0,6 0 0 1' -m string ! --string 227 --algo bm --icase -m string ! --string 228 --algo bm --icase -m string ! --string 229 --algo bm --icase -m string ! --string 234 --algo bm --icase -m string ! --string 421 --algo bm --icase -j RETURN
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --dports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '10,48 0 0 6,21 0 6 6,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,45 0 1 0,6 0 0 1,6 0 0 0' -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t mangle -A FTP_ALG -p tcp -m multiport --sports 21,2121 -m conntrack --ctstate ESTABLISHED -m bpf --bytecode '10,48 0 0 6,21 0 6 6,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,45 0 1 0,6 0 0 1,6 0 0 0' -j NFQUEUE --queue-num 0 --queue-bypass
	ip6tables -w -t mangle -C POSTROUTING -j FTP_ALG 2>/dev/null || ip6tables -w -t mangle -I POSTROUTING 1 -j FTP_ALG
	while ip6tables -w -t nat -D PREROUTING -j FTP_ALG_FTPS 2>/dev/null; do :; done
	if ip6tables -w -t nat -F FTP_ALG_FTPS 2>/dev/null; then ip6tables -w -t nat -X FTP_ALG_FTPS; fi
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
	while iptables -w -t nat -D PREROUTING -j FTP_ALG_FTPS 2>/dev/null; do :; done
	if iptables -w -t nat -F FTP_ALG_FTPS 2>/dev/null; then iptables -w -t nat -X FTP_ALG_FTPS; fi
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
	while ip6tables -w -t nat -D PREROUTING -j FTP_ALG_FTPS 2>/dev/null; do :; done
	if ip6tables -w -t nat -F FTP_ALG_FTPS 2>/dev/null; then ip6tables -w -t nat -X FTP_ALG_FTPS; fi
	for s in $(ipset list -n 2>/dev/null | grep '^ftp-alg-' || :); do ipset destroy "$s"; done
}

case "${1:-}" in
apply) ftp_alg_check; ftp_alg_apply ;;
remove) ftp_alg_remove ;;
*) echo "usage: $0 apply|remove" >&2; exit 2 ;;
esac
