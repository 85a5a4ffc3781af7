#!/usr/bin/env bash
# Provisions an FTP server node of the lab (the outside `server` and the `inside` server):
# routes, a served tree with known test files, vsftpd on LAB_FTP_VSFTPD_PORT and pyftpdlib on
# LAB_FTP_PYFTPDLIB_PORT, both anonymous, read-only except upload/.
#
# Usage: ftp-server.sh up|routes|down     (environment: see README.md)
#   routes: the routes alone, no server (the bare NAT network of the kernel tests)
# Idempotent: `up` twice keeps the running servers and the test files (and their sha256).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

need LAB_NODE LAB_STATE_DIR LAB_FTP_VSFTPD_PORT LAB_FTP_VSFTPD_PASV_MIN LAB_FTP_VSFTPD_PASV_MAX \
    LAB_FTP_PYFTPDLIB_PORT LAB_FTP_PYFTPDLIB_PASV_MIN LAB_FTP_PYFTPDLIB_PASV_MAX
PYTHON=${LAB_PYTHON:-python3}
FTP_USER=${LAB_FTP_USER:-ftp}
DIR=$(node_dir)
ROOT=${LAB_FTP_ROOT:-$DIR/ftp}

# The anonymous root must not be writable by the ftp user (vsftpd refuses to run otherwise);
# upload/ belongs to it. Test files are random, with their sha256 beside them.
make_tree() {
    local size f
    mkdir -p "$ROOT/upload" "$DIR/empty"
    chown root:root "$ROOT" "$DIR/empty"
    chmod 0755 "$ROOT" "$DIR/empty"
    chown "$FTP_USER" "$ROOT/upload"
    chmod 0755 "$ROOT/upload"
    for size in 1 2; do
        f="$ROOT/${size}mib.bin"
        if [ ! -s "$f" ] || [ ! -s "$f.sha256" ]; then
            head -c "${size}M" /dev/urandom >"$f"
            (cd "$ROOT" && sha256sum "${size}mib.bin" >"${size}mib.bin.sha256")
        fi
        chmod 0644 "$f" "$f.sha256"
    done
}

# listen_ipv6=YES alone serves IPv4 and IPv6 (listen=YES cannot be combined with it);
# background=NO keeps the recorded PID the server's; the seccomp sandbox breaks sessions in a
# namespace; connect_from_port_20 makes active data come from port 20 as on real servers.
# vsftpd 3.0 caps sessions at 2000 and at 50 per client address (the man page says 0): every
# lab client comes from one masqueraded address, and `ftp-alg lab bench` holds 1000 idle
# sessions and runs 64 at once, so both caps are off (0: unlimited).
write_vsftpd_conf() {
    cat >"$DIR/vsftpd.conf" <<CONF
listen=NO
listen_ipv6=YES
listen_port=$LAB_FTP_VSFTPD_PORT
background=NO
seccomp_sandbox=NO
connect_from_port_20=YES
max_clients=0
max_per_ip=0
anonymous_enable=YES
no_anon_password=YES
local_enable=NO
anon_root=$ROOT
ftp_username=$FTP_USER
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=NO
anon_other_write_enable=NO
anon_umask=022
port_enable=YES
pasv_enable=YES
pasv_min_port=$LAB_FTP_VSFTPD_PASV_MIN
pasv_max_port=$LAB_FTP_VSFTPD_PASV_MAX
secure_chroot_dir=$DIR/empty
dirmessage_enable=NO
xferlog_enable=YES
xferlog_std_format=NO
log_ftp_protocol=YES
vsftpd_log_file=$DIR/logs/vsftpd-protocol.log
CONF
}

up() {
    routes replace
    make_tree
    mkdir -p "$DIR/logs"
    write_vsftpd_conf
    start_bg vsftpd vsftpd "$DIR/vsftpd.conf"
    start_bg pyftpdlib "$PYTHON" "$here/pyftpd.py" --root "$ROOT" \
        --port "$LAB_FTP_PYFTPDLIB_PORT" \
        --passive-ports "$LAB_FTP_PYFTPDLIB_PASV_MIN-$LAB_FTP_PYFTPDLIB_PASV_MAX"
    wait_listen vsftpd "$LAB_FTP_VSFTPD_PORT"
    wait_listen pyftpdlib "$LAB_FTP_PYFTPDLIB_PORT"
}

down() {
    stop_bg pyftpdlib
    stop_bg vsftpd
    routes del
}

case "${1:-up}" in
    up) up ;;
    routes) routes replace ;;
    down) down ;;
    *) die "usage: $0 up|routes|down" ;;
esac
