#!/usr/bin/env bash
# Builds dist/ftp-alg_<version>_<arch>.deb with dpkg-deb, no debhelper: `make deb`.
#
# The program goes into a virtual environment of Debian's own Python at /usr/lib/ftp-alg, with
# the libraries Debian lacks (netfilterqueue is compiled here against libnetfilter-queue1, so
# the package is architecture-specific). A venv records absolute paths, so it is built inside
# the staging tree at its final path below it, and the staging prefix is then rewritten out of
# every text file; nothing is installed on this machine.
#
# Usage: debian/build-deb.sh [OUTDIR]   (default: dist/ beside debian/)
# Needs: python3-venv python3-dev gcc libnetfilter-queue-dev dpkg-dev, and PyPI (or a mirror).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
PREFIX=/usr/lib/ftp-alg
# The venv's interpreter is a symlink to this exact version: the package depends on it.
PYVER=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYTHON=/usr/bin/python$PYVER
VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
ARCH=$(dpkg --print-architecture)
# Reproducible dates: the last commit's, else now.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}

WORK=$(mktemp -d /tmp/ftp-alg-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg
VENV=$PKG$PREFIX
mkdir -p "$PKG/DEBIAN"

# 1. A clean copy of the source (tracked and new files, not .venv or build output), so that
#    building the wheel writes nothing into the checkout.
mkdir "$WORK/src"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
        tar -c -C "$ROOT" --null --no-recursion --ignore-failed-read -T - -f - 2>/dev/null |
        tar -x -C "$WORK/src"
else
    tar -c -C "$ROOT" --exclude=.venv --exclude=dist --exclude=build -f - . | tar -x -C "$WORK/src"
fi

# 2. The venv, with the package and its run-time dependencies; pip and setuptools leave again.
#    No wheel cache: a netfilterqueue wheel cached by another Python's build would be taken
#    as is (one from pyenv carried an RPATH into pyenv's tree). Debian's hardening flags.
export PIP_NO_CACHE_DIR=1 DEB_BUILD_MAINT_OPTIONS=hardening=+all
eval "$(cd "$WORK" && dpkg-buildflags --export=sh)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheel" "$WORK/src"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
    --no-binary netfilterqueue "$WORK"/wheel/ftp_alg-*.whl
"$VENV/bin/python" -m pip freeze --disable-pip-version-check >"$WORK/python-packages.txt"
"$VENV/bin/python" -m pip uninstall -q -y --disable-pip-version-check pip setuptools
find "$VENV" -depth -type d -name __pycache__ -exec rm -rf {} +
rm -rf "$VENV/share"  # scapy's man page: not a command this package offers
find "$VENV" -depth -type d -empty -delete
# Only the interpreter links and ftp-alg stay in bin/ (not activate, nor the libraries' tools).
find "$VENV/bin" -mindepth 1 ! -name 'python*' ! -name ftp-alg -delete
# The one absolute link, python3.X -> /usr/bin/python3.X, made relative (/usr is one tree).
ln -sfn "../../../bin/python$PYVER" "$VENV/bin/python$PYVER"
find "$VENV" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +

# 3. The staging prefix out of scripts' #! lines and pyvenv.cfg; none may remain anywhere.
grep -rlI --null -F "$VENV" "$VENV" | xargs -0 -r sed -i "s|$VENV|$PREFIX|g"
sed -i '/^command = /d' "$VENV/pyvenv.cfg"
# pip notes the wheel's temporary path as where the package came from: drop that note.
rm "$VENV"/lib/python*/site-packages/ftp_alg-*.dist-info/direct_url.json
sed -i '/direct_url.json/d' "$VENV"/lib/python*/site-packages/ftp_alg-*.dist-info/RECORD
if grep -rl -F "$WORK" "$PKG"; then
    echo "build-deb: the staging path is still in the files above" >&2
    exit 1
fi

# 4. Entry point, unit, config, rules, documentation, man page.
install -d "$PKG/usr/sbin" "$PKG/lib/systemd/system" "$PKG/etc/ftp-alg" \
    "$PKG/usr/share/ftp-alg/rules" "$PKG/usr/share/doc/ftp-alg" "$PKG/usr/share/man/man8" \
    "$PKG/usr/share/lintian/overrides"
ln -s ../lib/ftp-alg/bin/ftp-alg "$PKG/usr/sbin/ftp-alg"
# The docs' unit assumes a hand-made venv in /opt/ftp-alg and explains how to install it.
sed -e "s|/opt/ftp-alg/bin/ftp-alg|/usr/sbin/ftp-alg|g" \
    -e '/^Description=/a\
Documentation=man:ftp-alg(8)' \
    -e '/^# Install: cp /,/^# Assumes the virtual environment/c\
# Installed by the ftp-alg package, not enabled: edit /etc/ftp-alg/ftp-alg.toml, then\
# `systemctl enable --now ftp-alg`. See ftp-alg(8).' \
    -e "s|see docs/deployment.md|see /usr/share/doc/ftp-alg/deployment.md|" \
    "$ROOT/docs/ftp-alg.service" >"$PKG/lib/systemd/system/ftp-alg.service"
if grep -n "/opt/" "$PKG/lib/systemd/system/ftp-alg.service"; then
    echo "build-deb: docs/ftp-alg.service changed: adapt the sed above" >&2
    exit 1
fi
install -m 0644 "$ROOT/docs/ftp-alg.toml" "$PKG/etc/ftp-alg/ftp-alg.toml"
install -m 0644 "$ROOT"/rules/README.md "$PKG/usr/share/ftp-alg/rules/"
install -m 0755 "$ROOT"/rules/ftp-alg.iptables.sh "$ROOT"/rules/ftp-alg.nft "$PKG/usr/share/ftp-alg/rules/"
install -m 0644 "$ROOT/README.md" "$ROOT"/docs/{deployment,security,troubleshooting,kernel-helper}.md \
    "$ROOT/debian/copyright" "$WORK/python-packages.txt" "$PKG/usr/share/doc/ftp-alg/"
gzip -9n <"$ROOT/docs/ftp-alg.8" >"$PKG/usr/share/man/man8/ftp-alg.8.gz"
install -m 0644 "$ROOT/debian/lintian-overrides" "$PKG/usr/share/lintian/overrides/ftp-alg"
{
    echo "ftp-alg ($VERSION) unstable; urgency=medium"
    echo
    echo "  * Built from the ftp-alg repository, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo
    echo " -- $(sed -n 's/^Maintainer: //p' "$ROOT/debian/control.in")  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$PKG/usr/share/doc/ftp-alg/changelog.gz"

# 5. Control files. Depends: the interpreter, the shared libraries of the compiled module
#    (dpkg-shlibdeps reads them), and the programs the rules and the daemon run.
install -m 0644 "$ROOT/debian/conffiles" "$PKG/DEBIAN/"
install -m 0755 "$ROOT"/debian/{postinst,prerm,postrm} "$PKG/DEBIAN/"
mkdir -p "$WORK/shlibs/debian"
printf 'Source: ftp-alg\n\nPackage: ftp-alg\nArchitecture: any\n' >"$WORK/shlibs/debian/control"
mapfile -t sos < <(find "$VENV" -name '*.so')
shlibs=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O "${sos[@]/#/-e}" | sed -n 's/^shlibs:Depends=//p')
depends="python$PYVER, $shlibs, iptables, conntrack"
find "$PKG" -type d -exec chmod 0755 {} +
size=$(du -sk --apparent-size --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$size|" -e "s|@DEPENDS@|$depends|" \
    "$ROOT/debian/control.in" >"$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) >"$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/md5sums"

DEB=$OUT/ftp-alg_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
