#!/usr/bin/env bash
# Makes `promtool` available (the alert-rule tests run `promtool check rules` and `promtool test
# rules`). Debian's prometheus package ships it. Idempotent: does nothing when promtool is on PATH.
# Never starts the prometheus service: the package is installed for its tools only.
#
#   hack/install-prometheus.sh        prints the promtool version when done
set -euo pipefail

log() { echo "[install-prometheus] $*" >&2; }

if ! command -v promtool >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    log "promtool is missing and installing it needs root: run as root, or apt-get install prometheus"
    exit 1
  fi
  # A policy-rc.d that answers 101 tells the package scripts not to start services. Most
  # container images have one already; when this machine has none, add one just for this install.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  log "installing Debian's prometheus package (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  # Other setup scripts may be using apt at the same time: wait for the dpkg lock, do not fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null
  # In case a package script started it anyway (no policy-rc.d honoured), stop only that service.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus
  fi
fi

promtool --version 2>&1 | head -n 1
