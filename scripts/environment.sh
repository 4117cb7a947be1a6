# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): the project's virtual
# environment and the system packages the tests need.
#
#   tepo_use_venv DIR            use $VIRTUAL_ENV when one is activated, else DIR (created with
#                                `$PYTHON -m venv` on first use); puts it first on PATH
#   tepo_install NAME SPEC       CPU torch first, then `pip install -e SPEC`; skipped when the
#                                stamp NAME says SPEC was installed from this pyproject.toml
#   tepo_missing_system_packages LIST    the Debian packages of LIST that are not installed
#   tepo_system_packages LIST    installs those (as root, with apt-get) or prints the command
#
# Settings (environment variables): PYTHON, the interpreter that creates the venv (python3);
# TORCH_INDEX_URL, where the CPU torch comes from (PyTorch's CPU index; empty: pip's own index).

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"
# PyPI's Linux torch is the CUDA build (gigabytes of nvidia-* wheels); this index has the CPU one.
TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"

tepo_say() { echo "tepo-agent: $*" >&2; }

# Stops with one line saying what to install when $PYTHON cannot create a virtual environment.
tepo_check_python() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        tepo_say "error: $PYTHON not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3)"
        return 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        tepo_say "error: tepo-agent needs Python 3.11 or newer, $PYTHON is $("$PYTHON" -V 2>&1); set PYTHON=/path/to/python3.11"
        return 1
    fi
    # Debian and Ubuntu ship venv's ensurepip in a separate package; without it `-m venv` fails.
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        tepo_say "error: $PYTHON cannot create a virtual environment (no venv/ensurepip module); on Debian/Ubuntu install it with: sudo apt-get install python3-venv"
        return 1
    fi
}

tepo_use_venv() {
    local dir="$1"
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        dir="$VIRTUAL_ENV"
        if [ ! -x "$dir/bin/python" ]; then
            tepo_say "error: VIRTUAL_ENV=$dir has no bin/python; deactivate it or fix it"
            return 1
        fi
    elif [ ! -x "$dir/bin/python" ]; then
        tepo_check_python || return 1
        tepo_say "creating the virtual environment $dir ($("$PYTHON" -V 2>&1))"
        "$PYTHON" -m venv "$dir" || return 1
    fi
    if ! "$dir/bin/python" -c '' 2>/dev/null; then
        tepo_say "error: $dir/bin/python does not run (its Python was removed?); delete $dir and rerun"
        return 1
    fi
    VIRTUAL_ENV="$(cd "$dir" && pwd)"
    PATH="$VIRTUAL_ENV/bin:$PATH"
    export VIRTUAL_ENV PATH
    hash -r
}

# A digest of everything that decides what `pip install -e SPEC` installs from this checkout.
tepo_install_key() {
    python -c 'import hashlib, pathlib, sys
print(hashlib.sha256(pathlib.Path("pyproject.toml").read_bytes() + repr(sys.argv[1:]).encode()).hexdigest())' \
        "$1" "$TORCH_SPEC" "$PWD" "$(python -V)"
}

# Whether URL answers within 10 s (through the same proxy variables pip uses).
tepo_reachable() {
    python -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).close()' "$1" >/dev/null 2>&1
}

tepo_install() {
    local name="$1" spec="$2" stamp key
    stamp="$VIRTUAL_ENV/.tepo-agent-$name.installed"
    key="$(tepo_install_key "$spec")"
    # Nothing changed since the last install (the project is editable: source edits need none).
    if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] &&
        python -c 'import importlib.metadata as m; m.distribution("tepo-agent")' 2>/dev/null; then
        return 0
    fi
    local start=$SECONDS
    rm -f "$stamp"
    # A venv made without pip (`uv venv`, `--without-pip`, an interrupted creation) gets it here.
    if ! python -c 'import pip' 2>/dev/null; then
        tepo_say "installing pip into $VIRTUAL_ENV"
        python -m ensurepip --default-pip >/dev/null || return 1
    fi
    # An installed torch is kept (a CUDA build you chose, say); otherwise the CPU build, first, so
    # that resolving the project's `torch>=` floor never pulls a CUDA build.
    if ! python -c 'import importlib.metadata as m; m.distribution("torch")' 2>/dev/null; then
        local index=()
        if [ -n "$TORCH_INDEX_URL" ] && tepo_reachable "${TORCH_INDEX_URL%/}/torch/"; then
            index=(--index-url "$TORCH_INDEX_URL")
        elif [ -n "$TORCH_INDEX_URL" ]; then
            # pip would retry it five times for torch and for each of its dependencies.
            tepo_say "note: $TORCH_INDEX_URL is unreachable; torch comes from pip's own index" \
                "(PyPI's Linux torch is the CUDA build: set TORCH_INDEX_URL to a CPU mirror)"
        fi
        tepo_say "installing $TORCH_SPEC into $VIRTUAL_ENV"
        python -m pip install ${index[@]+"${index[@]}"} "$TORCH_SPEC" || return 1
    fi
    tepo_say "installing tepo-agent ($spec, editable) into $VIRTUAL_ENV"
    python -m pip install -e "$spec" || return 1
    echo "$key" >"$stamp"
    tepo_say "environment ready ($((SECONDS - start)) s)"
}

# The package names of LIST (one a line, `#` starts a comment) that dpkg does not report installed.
tepo_missing_system_packages() {
    local pkg
    sed -e 's/#.*//' "$1" | while read -r pkg; do
        [ -n "$pkg" ] || continue
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q ' installed$' || echo "$pkg"
    done
}

tepo_system_packages() {
    if [ -z "$(sed -e 's/#.*//' "$1" | tr -d '[:space:]')" ]; then
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1; then
        tepo_say "note: some tests need these Debian packages (or your system's equivalents):" \
            $(sed -e 's/#.*//' "$1")
        return 0
    fi
    local missing
    missing="$(tepo_missing_system_packages "$1" | tr '\n' ' ')"
    missing="${missing% }"
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        tepo_say "installing system packages the tests need: $missing"
        apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    else
        tepo_say "some tests need system packages that are not installed; install them with:"
        echo "sudo apt-get install -y --no-install-recommends $missing" >&2
    fi
}
