#!/usr/bin/env bash
# Install teamsbc on Debian 12 / Ubuntu 24.04, as root, from a release (the unpacked
# teamsbc-VERSION.tar.gz) or a checkout. Idempotent: run it again to upgrade (the config is
# never overwritten).
#
#   deploy/install.sh                    # packages, user, venv, config, units
#   deploy/install.sh --package FILE     # install teamsbc from this wheel or sdist file
#                                        # (dependencies from PyPI) instead of this tree
#   deploy/install.sh --with-rtpengine   # also rtpengine-daemon (user space, two legs)
#   deploy/install.sh --root DIR         # into DIR as if it were / (image builds, tests):
#                                        # no apt, no systemctl; the user goes into DIR/etc/passwd
#
# What it does:
#   apt: python3 python3-venv ca-certificates logrotate nftables (+ rtpengine-daemon)
#   user and group teamsbc (system, no login, home /var/lib/teamsbc)
#   /opt/teamsbc/venv with teamsbc on the distribution's python3; /usr/local/bin/teamsbc -> it
#   /etc/teamsbc (root:teamsbc 0750): teamsbc.yaml from the example if there is none (0640)
#   /var/lib/teamsbc (teamsbc 0750): the state the SBC and the renewal write: certs/, cdr.sqlite,
#     traces/; /var/log/teamsbc (the cron variant's renewal log); docs in /usr/share/doc/teamsbc
#   /etc/systemd/system: teamsbc.service, teamsbc-renew.service/.timer, teamsbc-firewall.service
#   /etc/logrotate.d/teamsbc
#   systemd running: daemon-reload; enables teamsbc-firewall.service (it loads
#   /etc/teamsbc/firewall.nft at boot once `teamsbc teams-setup --firewall` wrote it); the SBC
#   and the renewal timer are enabled by you once the config and the certificate exist
#   (docs/operations.md); an upgrade restarts a running SBC
set -euo pipefail

SRC=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
ROOT=""
WITH_RTPENGINE=0
PACKAGE=""
PREFIX=/opt/teamsbc
ETC=/etc/teamsbc
STATE=/var/lib/teamsbc
LOGS=/var/log/teamsbc
USER_NAME=teamsbc
PYTHON=${PYTHON:-python3}

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --with-rtpengine) WITH_RTPENGINE=1 ;;
        --package) [[ $# -ge 2 ]] || die "--package needs a file (teamsbc-VERSION-py3-none-any.whl or .tar.gz)"
                   PACKAGE=$(readlink -f "$2"); shift ;;
        --package=*) PACKAGE=$(readlink -f "${1#--package=}") ;;
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; ROOT=$(readlink -f "$2"); shift ;;
        --root=*) ROOT=$(readlink -f "${1#--root=}") ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

T() { printf '%s%s' "$ROOT" "$1"; }   # a path on the target system

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, a user and system units)"
if [[ -n "$PACKAGE" ]]; then
    [[ -f "$PACKAGE" ]] || die "--package $PACKAGE: no such file"
    [[ "$PACKAGE" == *.whl || "$PACKAGE" == *.tar.gz ]] || die "--package $PACKAGE: expected a .whl or .tar.gz of teamsbc"
else
    [[ -f "$SRC/pyproject.toml" && -d "$SRC/teamsbc" ]] || die "$SRC is neither an unpacked release nor a checkout (or give --package FILE)"
fi
[[ -f "$SRC/deploy/teamsbc.service" ]] || die "$SRC/deploy has no units: run the install.sh of a release or checkout"
if [[ -n "$ROOT" ]]; then
    [[ -d "$ROOT" ]] || die "--root $ROOT: no such directory"
    [[ "$ROOT" != / ]] || ROOT=""
fi
say "installing teamsbc from ${PACKAGE:-$SRC}${ROOT:+ into $ROOT}"

# --------------------------------------------------------------------------- packages
APT_PACKAGES=(python3 python3-venv ca-certificates logrotate nftables)
((WITH_RTPENGINE)) && APT_PACKAGES+=(rtpengine-daemon)

missing_packages() {
    local p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s ' "$p"
    done
}

if [[ -n "$ROOT" ]]; then
    say "--root: not touching apt (needs on this host: ${APT_PACKAGES[*]})"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get: install ${APT_PACKAGES[*]} yourself"
else
    missing=$(missing_packages)
    if [[ -z "$missing" ]]; then
        say "packages already installed: ${APT_PACKAGES[*]}"
    else
        say "apt-get install $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086  # one package per word
        apt-get install -y -q --no-install-recommends $missing
    fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "$("$PYTHON" -V 2>&1) is too old: teamsbc needs Python 3.11+ (Debian 12, Ubuntu 24.04)"

# --------------------------------------------------------------------------- user
owner=""   # uid:gid of the teamsbc user on the target, numeric (works for --root too)
if [[ -z "$ROOT" ]]; then
    if ! getent passwd "$USER_NAME" >/dev/null; then
        say "creating system user $USER_NAME"
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "teamsbc SBC" "$USER_NAME"
    else
        say "user $USER_NAME exists"
    fi
    owner="$(id -u "$USER_NAME"):$(id -g "$USER_NAME")"
elif [[ -f "$ROOT/etc/passwd" && -f "$ROOT/etc/group" ]]; then
    if ! grep -q "^$USER_NAME:" "$ROOT/etc/passwd"; then
        say "creating system user $USER_NAME in $ROOT/etc/passwd"
        useradd --root "$ROOT" --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "teamsbc SBC" "$USER_NAME"
    fi
    owner="$(awk -F: -v u="$USER_NAME" '$1 == u {print $3 ":" $4}' "$ROOT/etc/passwd")"
else
    say "--root: $ROOT has no etc/passwd: files stay owned by root (create user $USER_NAME later)"
fi
own() { [[ -n "$owner" ]] && chown "$@"; return 0; }
group_of() { printf '%s' "${owner#*:}"; }

# --------------------------------------------------------------------------- venv
VENV="$PREFIX/venv"
if [[ ! -x "$(T "$VENV")/bin/python" ]] || ! "$(T "$VENV")/bin/python" -c 'import sys' 2>/dev/null; then
    say "creating $(T "$VENV")"
    rm -rf "$(T "$VENV")"
    mkdir -p "$(T "$PREFIX")"
    "$PYTHON" -m venv "$(T "$VENV")" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
# pip trusts the system store (ca-certificates), so a site's TLS-inspecting proxy CA added to
# /usr/local/share/ca-certificates works for PyPI too
if [[ -z "${PIP_CERT:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
if [[ -n "$PACKAGE" ]]; then
    what=$PACKAGE
else
    # build from a clean copy: pip builds in the source tree, which must stay untouched
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml teamsbc | tar -C "$build" -xf -
    what=$build
fi
say "installing teamsbc and its dependencies into $(T "$VENV") (pip)"
"$(T "$VENV")/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir --upgrade "$what" ||
    die "pip install failed (it needs PyPI, or PIP_INDEX_URL / PIP_FIND_LINKS for a mirror)"
version=$("$(T "$VENV")/bin/teamsbc" --version) || die "the installed teamsbc does not run"
say "installed: $version"
mkdir -p "$(T /usr/local/bin)"
ln -sfn "$VENV/bin/teamsbc" "$(T /usr/local/bin/teamsbc)"   # teamsbc-renew.service and cron use it

# --------------------------------------------------------------------------- config, state
# /etc/teamsbc: read by the SBC (group teamsbc), written by root only
install -d -m 0750 "$(T "$ETC")"
[[ -n "$owner" ]] && chgrp "$(group_of)" "$(T "$ETC")"
install -m 0644 "$SRC/deploy/teamsbc.yaml.example" "$(T "$ETC/teamsbc.yaml.example")"
if [[ -e "$(T "$ETC/teamsbc.yaml")" ]]; then
    say "keeping $ETC/teamsbc.yaml (the example is refreshed beside it)"
else
    say "creating $ETC/teamsbc.yaml from the example: edit it (sbc.fqdn, pbx.*)"
    install -m 0640 "$SRC/deploy/teamsbc.yaml.example" "$(T "$ETC/teamsbc.yaml")"
    [[ -n "$owner" ]] && chgrp "$(group_of)" "$(T "$ETC/teamsbc.yaml")"
fi
# /var/lib/teamsbc: everything the SBC and the renewal write (the units' StateDirectory)
install -d -m 0750 "$(T "$STATE")" "$(T "$STATE/certs")" "$(T "$LOGS")"
own "$owner" "$(T "$STATE")" "$(T "$STATE/certs")" "$(T "$LOGS")"
if [[ -d "$(T "$ETC/certs/live")" ]] && [[ -z "$(ls -A "$(T "$STATE/certs")" 2>/dev/null)" ]]; then
    say "note: $ETC/certs is the old place of certificates; certs_dir is now $STATE/certs:"
    say "  cp -a $ETC/certs/. $STATE/certs/ && chown -R teamsbc:teamsbc $STATE/certs, and set certs_dir"
fi
install -d -m 0755 "$(T /usr/share/doc/teamsbc)"
for doc in "$SRC"/docs/*.md "$SRC/README.md"; do
    [[ -f "$doc" ]] && install -m 0644 "$doc" "$(T /usr/share/doc/teamsbc/)"
done
install -m 0644 "$SRC/deploy/nftables-teamsbc.nft" "$(T /usr/share/doc/teamsbc/nftables-teamsbc.nft)"

# --------------------------------------------------------------------------- units
UNITS=(teamsbc.service)
for u in teamsbc-renew.service teamsbc-renew.timer teamsbc-firewall.service; do
    [[ -f "$SRC/deploy/$u" ]] && UNITS+=("$u")
done
install -d -m 0755 "$(T /etc/systemd/system)"
for u in "${UNITS[@]}"; do
    install -m 0644 "$SRC/deploy/$u" "$(T "/etc/systemd/system/$u")"
done
say "units: ${UNITS[*]} -> /etc/systemd/system/"
install -d -m 0755 "$(T /etc/logrotate.d)"
install -m 0644 "$SRC/deploy/logrotate-teamsbc" "$(T /etc/logrotate.d/teamsbc)"

# --------------------------------------------------------------------------- rtpengine
if ((WITH_RTPENGINE)); then
    conf="$(T /etc/rtpengine/rtpengine.conf)"
    install -d -m 0755 "$(T /etc/rtpengine)"
    if [[ -f "$conf" ]] && grep -q managed-by-teamsbc "$conf"; then
        say "keeping /etc/rtpengine/rtpengine.conf (already teamsbc's)"
    else
        [[ -f "$conf" && ! -e "$conf.before-teamsbc" ]] && cp -p "$conf" "$conf.before-teamsbc"
        install -m 0644 "$SRC/deploy/rtpengine.conf" "$conf"
        say "installed /etc/rtpengine/rtpengine.conf: set its interface= addresses, then restart rtpengine-daemon"
    fi
    defaults="$(T /etc/default/rtpengine-daemon)"
    if [[ -f "$defaults" ]]; then   # table = -1: no kernel module, so no iptables rules for it
        sed -i 's/^MANAGE_IPTABLES=.*/MANAGE_IPTABLES=no/' "$defaults"
    fi
fi

# --------------------------------------------------------------------------- systemd
systemd_running() {
    [[ -d /run/systemd/system ]] || return 1
    local pid1
    pid1=$(cat /proc/1/comm 2>/dev/null || true)
    [[ "$pid1" == systemd ]]
}
if [[ -n "$ROOT" ]]; then
    say "--root: not running systemctl"
elif systemd_running && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    if [[ " ${UNITS[*]} " == *" teamsbc-firewall.service "* ]]; then
        systemctl enable --quiet teamsbc-firewall.service
        say "enabled: teamsbc-firewall.service (loads $ETC/firewall.nft at boot, once it exists)"
        [[ -f "$ETC/firewall.nft" ]] && systemctl restart teamsbc-firewall.service && say "reloaded $ETC/firewall.nft"
    fi
    if systemctl is-active --quiet teamsbc.service; then
        systemctl try-restart teamsbc.service && say "restarted teamsbc (upgrade)"
    fi
else
    say "systemd is not running here (container or chroot): units installed, not enabled;"
    say "  on the real system: systemctl daemon-reload && systemctl enable teamsbc-firewall"
fi

cat <<EOF
[install] done. Next (docs/operations.md, "Install"; /usr/share/doc/teamsbc/operations.md):
  1. edit $ETC/teamsbc.yaml (sbc.fqdn, pbx.listen, pbx.address, acme.email), then
       teamsbc check -c $ETC/teamsbc.yaml          (it says "certificate missing" until step 2)
  2. first certificate, as the teamsbc user with the right to bind port 80:
       systemctl start teamsbc-renew.service && teamsbc cert status -c $ETC/teamsbc.yaml
  3. firewall:  teamsbc teams-setup -c $ETC/teamsbc.yaml --firewall
  4. start:     systemctl enable --now teamsbc teamsbc-renew.timer
  5. Teams:     teamsbc teams-setup -c $ETC/teamsbc.yaml --powershell-only
  6. check:     teamsbc doctor -c $ETC/teamsbc.yaml
EOF
