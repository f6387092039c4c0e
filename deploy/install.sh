#!/usr/bin/env bash
# Install teamsbc on Debian 12 / Ubuntu 24.04, as root, from this checkout. Idempotent: run it
# again after `git pull` to upgrade (the config is never overwritten).
#
#   deploy/install.sh                    # packages, user, venv, config, units
#   deploy/install.sh --with-rtpengine   # also rtpengine-daemon (user space, two legs)
#   deploy/install.sh --root DIR         # into DIR as if it were / (image builds, tests):
#                                        # no apt, no systemctl; the user goes into DIR/etc/passwd
#
# What it does:
#   apt: python3 python3-venv ca-certificates logrotate (+ rtpengine-daemon)
#   user and group teamsbc (system, no login, home /var/lib/teamsbc)
#   /opt/teamsbc/venv with teamsbc installed from this checkout; /usr/local/bin/teamsbc -> it
#   /etc/teamsbc/teamsbc.yaml from deploy/teamsbc.yaml.example if there is none;
#   /etc/teamsbc/certs; /var/lib/teamsbc; /var/log/teamsbc; docs in /usr/share/doc/teamsbc
#   /etc/systemd/system/teamsbc.service (+ teamsbc-renew.service/.timer when deploy/ has them)
#   /etc/logrotate.d/teamsbc; /etc/teamsbc/nftables-teamsbc.nft (a template: not loaded)
#   systemctl daemon-reload + enable, only when systemd runs this machine (PID 1)
set -euo pipefail

SRC=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
ROOT=""
WITH_RTPENGINE=0
PREFIX=/opt/teamsbc
ETC=/etc/teamsbc
STATE=/var/lib/teamsbc
LOGS=/var/log/teamsbc
USER_NAME=teamsbc
PYTHON=${PYTHON:-python3}

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --with-rtpengine) WITH_RTPENGINE=1 ;;
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; ROOT=$(readlink -f "$2"); shift ;;
        --root=*) ROOT=$(readlink -f "${1#--root=}") ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

T() { printf '%s%s' "$ROOT" "$1"; }   # a path on the target system

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, a user and system units)"
[[ -f "$SRC/pyproject.toml" && -d "$SRC/teamsbc" ]] || die "$SRC is not a teamsbc checkout"
if [[ -n "$ROOT" ]]; then
    [[ -d "$ROOT" ]] || die "--root $ROOT: no such directory"
    [[ "$ROOT" != / ]] || ROOT=""
fi
say "installing teamsbc from $SRC${ROOT:+ into $ROOT}"

# --------------------------------------------------------------------------- packages
APT_PACKAGES=(python3 python3-venv ca-certificates logrotate)
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
# build from a clean copy: pip builds in the source tree, which must stay untouched
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=__pycache__ -cf - pyproject.toml teamsbc | tar -C "$build" -xf -
say "installing teamsbc and its dependencies into $(T "$VENV") (pip)"
"$(T "$VENV")/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir --upgrade "$build" ||
    die "pip install failed (it needs PyPI, or PIP_INDEX_URL / PIP_FIND_LINKS for a mirror)"
version=$("$(T "$VENV")/bin/teamsbc" --version) || die "the installed teamsbc does not run"
say "installed: $version"
mkdir -p "$(T /usr/local/bin)"
ln -sfn "$VENV/bin/teamsbc" "$(T /usr/local/bin/teamsbc)"   # teamsbc-renew.service and cron use it

# --------------------------------------------------------------------------- config, state
install -d -m 0750 "$(T "$ETC")" "$(T "$ETC/certs")"
[[ -n "$owner" ]] && chgrp "$(group_of)" "$(T "$ETC")" "$(T "$ETC/certs")"
install -m 0644 "$SRC/deploy/teamsbc.yaml.example" "$(T "$ETC/teamsbc.yaml.example")"
if [[ -e "$(T "$ETC/teamsbc.yaml")" ]]; then
    say "keeping $ETC/teamsbc.yaml (the example is refreshed beside it)"
else
    say "creating $ETC/teamsbc.yaml from the example: edit it (sbc.fqdn, pbx.*)"
    install -m 0640 "$SRC/deploy/teamsbc.yaml.example" "$(T "$ETC/teamsbc.yaml")"
    [[ -n "$owner" ]] && chgrp "$(group_of)" "$(T "$ETC/teamsbc.yaml")"
fi
[[ -e "$(T "$ETC/nftables-teamsbc.nft")" ]] ||
    install -m 0644 "$SRC/deploy/nftables-teamsbc.nft" "$(T "$ETC/nftables-teamsbc.nft")"
install -d -m 0750 "$(T "$STATE")" "$(T "$LOGS")"
own "$owner" "$(T "$STATE")" "$(T "$LOGS")"
install -d -m 0755 "$(T /usr/share/doc/teamsbc)"
for doc in "$SRC"/docs/*.md "$SRC/README.md"; do
    [[ -f "$doc" ]] && install -m 0644 "$doc" "$(T /usr/share/doc/teamsbc/)"
done

# --------------------------------------------------------------------------- units
UNITS=(teamsbc.service)
for u in teamsbc-renew.service teamsbc-renew.timer; do
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
    enable=(teamsbc.service)
    [[ " ${UNITS[*]} " == *" teamsbc-renew.timer "* ]] && enable+=(teamsbc-renew.timer)
    systemctl enable "${enable[@]}"
    say "enabled: ${enable[*]}"
    if systemctl is-active --quiet teamsbc.service; then
        systemctl try-restart teamsbc.service && say "restarted teamsbc (upgrade)"
    fi
else
    say "systemd is not running here (container or chroot): units installed, not enabled;"
    say "  on the real system: systemctl daemon-reload && systemctl enable --now teamsbc"
fi

cat <<EOF
[install] done. Next:
  1. edit $ETC/teamsbc.yaml (sbc.fqdn, pbx.listen, pbx.address), then: teamsbc check -c $ETC/teamsbc.yaml
  2. certificate:  teamsbc cert issue -c $ETC/teamsbc.yaml   (docs: /usr/share/doc/teamsbc/certificates.md)
  3. firewall:     teamsbc teams-setup -c $ETC/teamsbc.yaml --firewall-only
  4. start:        systemctl enable --now teamsbc teamsbc-renew.timer
  5. Teams side:   teamsbc teams-setup -c $ETC/teamsbc.yaml --powershell-only
  6. check:        teamsbc doctor -c $ETC/teamsbc.yaml
EOF
