#!/usr/bin/env bash
# make arm64-check: run the edge agent as aarch64 code under qemu-user on this x86 machine and
# show it installing a signed update over MQTT from a registry here, then answering a request.
#
#   1. qemu-user-static (apt-get; needs root the first time)
#   2. Debian 12 arm64 packages of python3.11 and the libraries it links, unpacked with
#      `dpkg -x` into a root folder (apt state of its own: the host's dpkg is not touched)
#   3. the agent's dependencies as aarch64 manylinux wheels, `pip install --target`
#   4. scripts/arm64/drive.py: registry + embedded broker here, the agent under
#      `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 -m edge_agent run ...`
#
# Downloads (about 70 MB) are cached under .cache/arm64/; a second run reuses them.
# Not part of `make test`: it needs the network and takes a few minutes.
set -euo pipefail

cd "$(dirname "$0")/.."
PROJECT=$PWD
CACHE=$PROJECT/.cache/arm64
PYTHON=${PYTHON:-$PROJECT/.venv/bin/python}
ONNXRUNTIME=${ONNXRUNTIME:-1.19.2}
QEMU=${QEMU:-qemu-aarch64-static}
# The devices' C library is Debian 12's glibc 2.36: every manylinux tag up to it runs there.
GLIBC_MINOR_MAX=36

started=$SECONDS
say() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - started))"; }

mkdir -p "$CACHE"
# Keep the cache out of git without touching the project's .gitignore.
[ -f "$PROJECT/.cache/.gitignore" ] || printf '*\n' > "$PROJECT/.cache/.gitignore"

if [ ! -x "$PYTHON" ]; then
    echo "arm64-check: $PYTHON is missing; run 'make install' first" >&2
    exit 1
fi

# --- 1. qemu ------------------------------------------------------------------------------
say "qemu-user-static"
if ! command -v "$QEMU" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "arm64-check: $QEMU is missing: run 'sudo apt-get install -y qemu-user-static'" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static
fi
"$QEMU" --version | head -n 1

# --- 2. an arm64 Debian root with python3.11 ------------------------------------------------
APT_STATE=$CACHE/apt
ROOT=$CACHE/rootfs
APT_OPTS=(
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64
    -o Dir::State::Lists="$APT_STATE/lists" -o Dir::Cache="$APT_STATE/cache"
    -o Dir::State::status="$APT_STATE/status"
    -o APT::Sandbox::User=root
)
say "arm64 python3.11 root in $ROOT"
if [ ! -f "$ROOT/.complete" ]; then
    mkdir -p "$APT_STATE/lists/partial" "$APT_STATE/cache/archives/partial" "$CACHE/debs"
    : > "$APT_STATE/status"  # an empty dpkg status: resolve the whole closure for arm64
    apt-get "${APT_OPTS[@]}" update -q
    # python3.11 and libstdc++6 (onnxruntime's wheel links it) with everything they depend
    # on, less the tools a package manager needs to install them (perl, dpkg, tar).
    mapfile -t packages < <(
        apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests \
            --no-conflicts --no-breaks --no-replaces --no-enhances python3.11 libstdc++6 \
            | grep -v '^ ' | sort -u \
            | grep -vE '^(perl|perl-base|perl-modules-[0-9.]+|libperl[0-9.]+|dpkg|install-info|tar)$'
    )
    echo "${#packages[@]} packages: ${packages[*]}"
    (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download "${packages[@]}")
    rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
    for deb in "$CACHE"/debs/*_arm64.deb "$CACHE"/debs/*_all.deb; do
        if [ -e "$deb" ]; then dpkg -x "$deb" "$ROOT.tmp"; fi
    done
    touch "$ROOT.tmp/.complete"
    rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
fi
du -sh "$ROOT" | cut -f1

# --- 3. the agent's dependencies as aarch64 wheels -----------------------------------------
SITE=$CACHE/site
REQUIREMENTS=$CACHE/requirements.txt
"$PYTHON" scripts/arm64/requirements.py --onnxruntime "$ONNXRUNTIME" pyproject.toml \
    > "$REQUIREMENTS.new"
say "aarch64 wheels in $SITE: $(tr '\n' ' ' < "$REQUIREMENTS.new")"
if [ ! -f "$SITE/.complete" ] || ! cmp -s "$REQUIREMENTS.new" "$REQUIREMENTS"; then
    platforms=(--platform manylinux2014_aarch64)
    for minor in $(seq 17 "$GLIBC_MINOR_MAX"); do
        platforms+=(--platform "manylinux_2_${minor}_aarch64")
    done
    rm -rf "$SITE.tmp"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$SITE.tmp" --only-binary=:all: "${platforms[@]}" \
        --python-version 3.11 --implementation cp --abi cp311 \
        --requirement "$REQUIREMENTS.new"
    touch "$SITE.tmp/.complete"
    rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
    mv "$REQUIREMENTS.new" "$REQUIREMENTS"
else
    rm -f "$REQUIREMENTS.new"
fi
du -sh "$SITE" | cut -f1

# --- 4. the emulated agent meets the registry ---------------------------------------------
say "the aarch64 interpreter"
PYTHONPATH="$SITE:$PROJECT" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
    "$QEMU" -L "$ROOT" "$ROOT/usr/bin/python3.11" -c '
import platform, sys, numpy, onnxruntime, edge_agent
print(f"{platform.machine()} Python {platform.python_version()}, numpy {numpy.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, edge_agent {edge_agent.__version__}")
sys.exit(platform.machine() != "aarch64")'

say "signed update over MQTT to the emulated agent"
"$PYTHON" scripts/arm64/drive.py --qemu "$QEMU" --root "$ROOT" --site "$SITE" \
    --work "$CACHE/run"

say "arm64-check passed"
