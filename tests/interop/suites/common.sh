# Shared by the suite scripts (sourced): the cache directory, fetching a
# release from PyPI, the Python virtualenv the suites' test dependencies go in.
#
# SUITES_CACHE (default target/suites): releases, unpacked, re-used when present.
# SUITES_VENV (default target/ci-venv): the virtualenv (created when absent).
# SUITES_TIMEOUT: the bound of one suite run, in seconds (default 600).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
HERE="$ROOT/tests/interop/suites"
CACHE="$(realpath -m "${SUITES_CACHE:-$ROOT/target/suites}")"
VENV="$(realpath -m "${SUITES_VENV:-$ROOT/target/ci-venv}")"
SUITE_TIMEOUT="${SUITES_TIMEOUT:-600}"
mkdir -p "$CACHE"

die() {
    printf '!!!! %s: %s\n' "$(basename "$0")" "$*" >&2
    exit 2
}

# python_venv: makes sure $VENV exists; sets PY
python_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" || die "cannot create the virtualenv $VENV"
    fi
    PY="$VENV/bin/python"
}

# pip_install ARGS...: quiet pip into $VENV
pip_install() {
    PIP_ROOT_USER_ACTION=ignore timeout 600 "$PY" -m pip install --quiet --disable-pip-version-check "$@" ||
        die "pip install $* failed"
}

# fetch_sdist NAME VERSION: the release's sdist from PyPI, unpacked in
# $CACHE/NAME-VERSION (re-used when present); prints that directory
fetch_sdist() {
    local name=$1 version=$2
    local dir="$CACHE/$name-$version"
    if [[ ! -f "$dir/.fetched" ]]; then
        rm -rf "$dir" "$CACHE/dl-$name"
        mkdir -p "$CACHE/dl-$name"
        # only this package from source: its build dependencies may be wheels
        PIP_ROOT_USER_ACTION=ignore timeout 300 "$PY" -m pip download --quiet --disable-pip-version-check \
            --no-deps --no-binary "$name" -d "$CACHE/dl-$name" "$name==$version" >&2 ||
            die "pip download $name==$version failed"
        local sdist
        sdist="$(ls "$CACHE/dl-$name"/*.tar.gz 2>/dev/null | head -n 1)"
        [[ -n "$sdist" ]] || die "no sdist of $name==$version downloaded"
        mkdir -p "$dir"
        tar -xzf "$sdist" -C "$dir" --strip-components=1 || die "cannot unpack $sdist"
        cp "$sdist" "$dir/.sdist.tar.gz"
        rm -rf "$CACHE/dl-$name"
        touch "$dir/.fetched"
    fi
    printf '%s\n' "$dir"
}
