#!/usr/bin/env bash
# Idempotent set-up for mixbridge on a fresh machine (Debian 12 or any machine with R).
# 1. R + lme4 + arm (+ jsonlite for the subprocess transport; broom.mixed, emmeans and lmerTest,
#    which the tests run on lme4's fits and on fits handed to R): from Debian's r-cran-* packages
#    when they are missing and apt is usable (root or sudo); otherwise use the R on PATH and say
#    what is missing.
# 2. Chromium (Debian's `chromium`), in which the tests render the HTML conformance report.
# 3. A virtual environment in .venv with the package and its test extras.
# 4. rpy2 picked from the installed R's version (rpy2 >= 3.6.7 needs R >= 4.5; older R gets 3.5.17).
# Quick when everything is already there. Source it or run it; it prints what it does on stderr.
set -euo pipefail

MIXBRIDGE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIXBRIDGE_VENV:-$MIXBRIDGE_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
R_PACKAGES_DEB="r-base-core r-base-dev r-cran-lme4 r-cran-arm r-cran-jsonlite r-cran-broom.mixed r-cran-emmeans r-cran-lmertest r-cran-pbkrtest"
# the R packages those provide (checked before apt runs; named in the hints when missing)
R_PACKAGES="lme4 arm Matrix jsonlite broom.mixed emmeans lmerTest pbkrtest"
BROWSER_PACKAGES_DEB="chromium"
# pip extras: the test tools and the peers (glmm, mixedlm) the conformance tests certify; part of
# the stamp, so an existing venv re-installs when this list changes
EXTRAS="test,peers"

say() { printf '[mixbridge setup] %s\n' "$*" >&2; }

r_has_packages() {
    command -v Rscript >/dev/null 2>&1 || return 1
    Rscript --vanilla -e 'ok <- all(vapply(commandArgs(TRUE), requireNamespace, logical(1), quietly=TRUE)); quit(status = if (ok) 0 else 1)' $R_PACKAGES >/dev/null 2>&1
}

apt_usable() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$(id -u)" = 0 ]; then return 0; fi
    command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1
}

install_r() {
    if r_has_packages; then return 0; fi
    if apt_usable; then
        local SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo -n"
        say "installing R, lme4 and arm from Debian packages: $R_PACKAGES_DEB"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq </dev/null >&2
        $SUDO apt-get install -y -qq --no-install-recommends $R_PACKAGES_DEB </dev/null >&2
    fi
    if ! r_has_packages; then
        if ! command -v Rscript >/dev/null 2>&1; then
            say "R was not found and apt is not usable here."
            say "Install R >= 4.1 (https://cloud.r-project.org or conda install -c conda-forge r-base),"
            say "then in R: install.packages(c('lme4', 'arm', 'jsonlite', 'broom.mixed', 'emmeans', 'lmerTest', 'pbkrtest'))"
        else
            missing=$(Rscript --vanilla -e 'p <- commandArgs(TRUE); cat(p[!vapply(p, requireNamespace, logical(1), quietly=TRUE)])' $R_PACKAGES 2>/dev/null || true)
            say "R is at $(command -v Rscript) but these R packages are missing: ${missing:-unknown}"
            say "Install them in R: install.packages(c($(printf "'%s'," $missing | sed 's/,$//')))"
            say "or with conda: conda install -c conda-forge $(for p in $missing; do printf 'r-%s ' "$p"; done)"
        fi
        say "Continuing without the R engine: the Python engine works; R-backed tests will fail under CI=true."
    fi
}

install_browser() {
    if command -v chromium >/dev/null 2>&1; then return 0; fi
    if apt_usable; then
        local SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo -n"
        say "installing Chromium (the report is rendered in it by the tests): $BROWSER_PACKAGES_DEB"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq </dev/null >&2
        $SUDO apt-get install -y -qq --no-install-recommends $BROWSER_PACKAGES_DEB </dev/null >&2
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        say "Chromium was not found and apt is not usable: the report's browser test will fail under CI=true"
        say "(install Chromium, or point MIXBRIDGE_CHROMIUM at a Chromium/Chrome binary)"
    fi
}

pick_rpy2() {
    # Echo the rpy2 requirement that works with the installed R, or nothing when there is no R.
    command -v Rscript >/dev/null 2>&1 || return 0
    local ver
    ver=$(Rscript --vanilla -e 'cat(R.version$major, R.version$minor, sep=".")' 2>/dev/null || true)
    [ -n "$ver" ] || return 0
    if printf '%s\n4.5.0\n' "$ver" | sort -V -C; then
        echo "rpy2==3.5.17"   # R < 4.5: rpy2 3.6.7+ fails with undefined symbol R_getVar
    else
        echo "rpy2>=3.6.7"
    fi
}

make_venv() {
    local stamp="$VENV/.mixbridge-stamp"
    local want
    want="$(cat "$MIXBRIDGE_ROOT/pyproject.toml" | sha256sum | cut -c1-16) $(pick_rpy2) [$EXTRAS]"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    say "creating the virtual environment in $VENV"
    if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 ships venv separately (python3-venv)
        rm -rf "$VENV"
        if apt_usable; then
            local SUDO=""
            [ "$(id -u)" = 0 ] || SUDO="sudo -n"
            say "installing python3-venv"
            $SUDO apt-get update -qq </dev/null >&2
            $SUDO apt-get install -y -qq --no-install-recommends python3-venv </dev/null >&2
        fi
        "$PYTHON" -m venv "$VENV" || {
            say "$PYTHON cannot create a virtual environment: install python3-venv (Debian) or use a Python with venv"
            return 1
        }
    fi
    local rpy2_req log="$VENV/pip-install.log"
    rpy2_req=$(pick_rpy2)
    if ! "$VENV/bin/python" -m pip install -q -e "$MIXBRIDGE_ROOT[$EXTRAS]" $rpy2_req </dev/null >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        say "pip install failed (full log: $log)"
        return 1
    fi
    echo "$want" >"$stamp"
}

install_r
install_browser
make_venv
export PATH="$VENV/bin:$PATH"
