"""Adapters to the Linux kernel: ctnetlink (conntrack lookups, NAT expectations, destroy
events) and the packet-filter rules that queue FTP control traffic and anchor expectations.

Module map: `cttypes` (Tuple and friends, errors), `messages` (ctnetlink layouts), `netlink`
(socket transport), `ctnetlink` (typed API), `ctevents` (destroy listener), `rules` (pure
rendering), `rules_exec` (runs iptables/nft), `rules_command` (`ftp-alg rules`). Importing the
package does no I/O.
"""
