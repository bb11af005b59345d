#!/usr/bin/env bash
# The comparative benchmark in one command: dlstudy vs curl --parallel vs dicomweb-client on the
# same data, served by nginx over HTTP/1.1, h2c and TLS h2, at 0 and 20 ms RTT.
#
#   bash benchmarks/run.sh            # full run, 5 repeats (~25 min on 2 cores + data build)
#   bash benchmarks/run.sh --quick    # small datasets, 1 repeat (~1-3 min)
#
# Installs what it needs: Debian's nginx, curl and GNU time (apt, when missing; needs root or
# sudo), a virtual environment benchmarks/.venv with this checkout (editable) and another,
# benchmarks/.venv-dwc, with dicomweb-client. Then
# runs benchmarks/compare.py with the arguments given (see --help). Data and client output go to
# /tmp/dlstudy-compare (--data-dir); results to benchmarks/results/compare.json and compare.md.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "installing ${missing[*]} (apt)" >&2
    $sudo apt-get update -qq
    # The package starts no service where invoke-rc.d/policy-rc.d forbid it (containers); on a
    # full system it does, and compare.py runs its own nginx on free ports beside it anyway.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Each client in its own environment, as a user would have it: dicomweb-client's dependencies
# (requests, ...) would otherwise be imported by pydicom in dlstudy's process, and the reverse.
venv=benchmarks/.venv
dwc_venv=benchmarks/.venv-dwc
for v in "$venv" "$dwc_venv"; do
    if [[ ! -x $v/bin/python ]]; then
        python3 -m venv "$v"
        "$v/bin/python" -m pip install --quiet --upgrade pip
    fi
done
# Editable: the benchmark always measures the working tree. Re-run each time (fast when satisfied).
"$venv/bin/python" -m pip install --quiet -e .
# pip compiles the bytecode of what it installs, but not of an editable checkout, and Python
# does not cache it where PYTHONDONTWRITEBYTECODE is set (as on these machines): without this,
# every dlstudy run would compile its own modules first (~70 ms), unlike an installed dlstudy.
"$venv/bin/python" -m compileall -q dlstudy
"$dwc_venv/bin/python" -m pip install --quiet "dicomweb-client>=0.60"

exec "$venv/bin/python" benchmarks/compare.py --dwc-python "$dwc_venv/bin/python" "$@"
