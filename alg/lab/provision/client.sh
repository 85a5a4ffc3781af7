#!/usr/bin/env bash
# Provisions the lab's client node: its only job is routing through the router, so that
# everything it sends to the outside is masqueraded. The FTP clients (curl, lftp, tnftp, wget,
# busybox, Python ftplib) are installed by .ci/install on the machine or VM.
#
# Usage: client.sh up|down     (environment: see README.md)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

need LAB_NODE LAB_ROUTE_VIA_IPV4

case "${1:-up}" in
    up) routes replace ;;
    down) routes del ;;
    *) die "usage: $0 up|down" ;;
esac
