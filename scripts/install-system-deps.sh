#!/usr/bin/env bash
# Install the Debian packages the test suite needs: Orthanc + its DICOMweb plugin (integration
# tests against a real third-party server), nginx and openssl (`dlstudy bench` against a static
# DICOMweb tree), librsvg2-bin (the bench chart's PNG output), curl (third-party client tests),
# tinyproxy and microsocks (real HTTP/CONNECT and SOCKS5 proxies for the proxy tests; socat puts
# TLS in front of tinyproxy for an https:// proxy), slurm-wlm
# and munge (a one-node SLURM cluster runs examples/slurm-array.sh in tests/integration/test_slurm.py),
# gdb (stops a `--workers` parent at the moment it holds the workers' shared lock, in
# tests/integration/test_workers.py).
#
# Idempotent: if every tool is already there it exits at once. Otherwise it installs only the
# packages that are missing (apt-get update + apt-get install --no-install-recommends
# --no-upgrade): packages already installed are never upgraded. The packages' postinst scripts
# would start system-wide services (Orthanc on 8042/4242, nginx, tinyproxy, munge, slurmctld,
# slurmd); we block that with
# a temporary /usr/sbin/policy-rc.d (exit 101) and restore whatever was there before. The tests
# start their own processes on free ports with their own config and storage.
#
# Prints exactly one summary line on success. Exit codes: 0 ok, 1 install failed, 2 no privileges.
set -euo pipefail

ORTHANC_BIN_CANDIDATES=(/usr/sbin/Orthanc /usr/bin/Orthanc)
PLUGIN_CANDIDATES=(
    /usr/share/orthanc/plugins/libOrthancDicomWeb.so
    /usr/lib/orthanc/libOrthancDicomWeb.so.1.7
)

find_first() {
    local f
    for f in "$@"; do
        if [ -e "$f" ]; then
            printf '%s\n' "$f"
            return 0
        fi
    done
    return 1
}

find_orthanc() {
    command -v Orthanc 2>/dev/null || find_first "${ORTHANC_BIN_CANDIDATES[@]}"
}

find_plugin() {
    find_first "${PLUGIN_CANDIDATES[@]}" || find_first /usr/lib/orthanc/libOrthancDicomWeb.so*
}

describe() {
    local package version listed=()
    for package in "${PACKAGES[@]}"; do
        version=$(dpkg-query -W -f='${Version}' "$package" 2>/dev/null || echo "?")
        listed+=("$package ${version:-?}")
    done
    local IFS=","
    printf '%s' "${listed[*]}" | sed 's/,/, /g'
}

PACKAGES=(orthanc orthanc-dicomweb curl nginx openssl librsvg2-bin tinyproxy microsocks socat slurm-wlm munge gdb)
have_tools() {
    find_orthanc >/dev/null && find_plugin >/dev/null && command -v curl >/dev/null \
        && { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } \
        && command -v openssl >/dev/null && command -v rsvg-convert >/dev/null \
        && { command -v tinyproxy >/dev/null || [ -x /usr/sbin/tinyproxy ]; } \
        && command -v microsocks >/dev/null && command -v socat >/dev/null && have_slurm \
        && command -v gdb >/dev/null
}

# slurmctld, slurmd and munged live in /usr/sbin, which a non-root PATH may lack.
have_slurm() {
    local tool
    for tool in slurmctld slurmd munged; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || return 1
    done
    command -v sbatch >/dev/null && command -v sinfo >/dev/null
}

# The packages of PACKAGES that are not installed (dpkg says so): only these are installed.
missing_packages() {
    local package status
    for package in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
        [ "$status" = "installed" ] || printf '%s\n' "$package"
    done
}

if have_tools; then
    echo "install-system-deps: already installed, nothing to do: $(describe)"
    exit 0
fi

# --- privileges -------------------------------------------------------------------------------
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install-system-deps: must run as root (or with password-less sudo) to apt-get install" \
            "${PACKAGES[*]}; run: sudo bash scripts/install-system-deps.sh" >&2
        exit 2
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "install-system-deps: apt-get not found; this script supports Debian/Ubuntu only." \
        "Install Orthanc + the DICOMweb plugin yourself (Orthanc binary on PATH," \
        "plugin at /usr/share/orthanc/plugins/libOrthancDicomWeb.so)." >&2
    exit 1
fi

run() { "${SUDO[@]}" "$@"; }

# --- keep the package from starting a system-wide Orthanc service -----------------------------
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
restore_policy() {
    if [ -n "$POLICY_BACKUP" ]; then
        run mv -f "$POLICY_BACKUP" "$POLICY"
    else
        run rm -f "$POLICY"
    fi
}
# (a policy-rc.d carrying our marker is a leftover of an interrupted run: not restored)
if [ -e "$POLICY" ] && ! grep -q "written by dlstudy" "$POLICY" 2>/dev/null; then
    POLICY_BACKUP=$(run mktemp "$POLICY.dlstudy-backup.XXXXXX")
    run cp -p "$POLICY" "$POLICY_BACKUP"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# temporary, written by dlstudy scripts/install-system-deps.sh\nexit 101\n' \
    | run tee "$POLICY" >/dev/null
run chmod 0755 "$POLICY"

# --- install ------------------------------------------------------------------------------------
mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
    echo "install-system-deps: every package is installed, yet a tool is missing (Orthanc, its" \
        "DICOMweb plugin, curl, nginx, openssl, rsvg-convert, tinyproxy, microsocks, socat, slurm," \
        "munge or gdb)" >&2
    exit 1
fi
start=$(date +%s)
log=$(mktemp /tmp/install-system-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive
if ! { run env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300 \
        && run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 \
            --no-upgrade -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${MISSING[@]}"; } </dev/null >"$log" 2>&1; then
    echo "install-system-deps: apt-get failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi

# Belt and braces: if a service got started anyway (policy-rc.d ignored), stop it.
for service in orthanc nginx tinyproxy munge slurmctld slurmd; do
    if [ -x "/etc/init.d/$service" ] && run "/etc/init.d/$service" status >/dev/null 2>&1; then
        run "/etc/init.d/$service" stop >>"$log" 2>&1 || true
    fi
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        run systemctl disable --now "$service.service" >>"$log" 2>&1 || true
    fi
done

if ! have_tools; then
    echo "install-system-deps: packages installed but a tool is still missing (Orthanc, its" \
        "DICOMweb plugin, curl, nginx, openssl, rsvg-convert, tinyproxy, microsocks, socat, slurm," \
        "munge or gdb; see $log)" >&2
    exit 1
fi
# dpkg's "Unpacking libssl3:amd64 (3.0.x) over (3.0.y)": a library a missing package needs newer.
upgraded=$(grep '^Unpacking .*(.* over ' "$log" | awk '{print $2}' | paste -sd' ' || true)
echo "install-system-deps: installed ${MISSING[*]} in $(( $(date +%s) - start )) s" \
    "(upgraded as their dependencies: ${upgraded:-none}): $(describe) [log: $log]"
