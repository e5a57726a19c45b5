#!/usr/bin/env bash
# Runs the tinygpt notebooks with the evcxr Rust kernel, installing nothing globally.
#
#   scripts/notebooks.sh setup          find or install nbconvert/JupyterLab and evcxr_jupyter, register the kernel
#   scripts/notebooks.sh lab            start JupyterLab on notebooks/
#   scripts/notebooks.sh execute IN OUT execute notebook IN headless, writing the executed notebook to OUT
#   scripts/notebooks.sh env            print the environment variables the kernel runs with
#
# Tools at the pinned versions are taken from PATH when present (e.g. the conda environment of
# environment.yml); otherwise they are installed under $TINYGPT_CACHE (default ~/.cache/tinygpt):
# a Python virtualenv with nbconvert, and `cargo install --locked evcxr_jupyter`. The kernel is
# registered in a Jupyter folder of that cache (JUPYTER_PATH), not in your own Jupyter settings.
#
# evcxr compiles every cell with cargo. Its build folder lives in the cache too, one per set of
# third-party crate versions in Cargo.lock (our own crates' entries do not count: adding a
# dependency that is already in the lock changes nothing), so a second checkout or a second run
# compiles nothing again; a cargo config in
# its parent folder (copied from notebooks/cargo-config.toml) builds candle, gemm, polars and tinygpt optimised
# and without debug assertions, so cells run the library at release speed.
set -euo pipefail

EVCXR_VERSION=0.22.0
NBCONVERT_VERSION=7.17.2
NBCLIENT_VERSION=0.11.0
JUPYTERLAB_VERSION=4.5.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TINYGPT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinygpt}
mkdir -p "$CACHE"

log() { echo "notebooks.sh: $*" >&2; }

# evcxr_jupyter: from PATH at the pinned version, else cargo-installed into the cache.
find_evcxr() {
  # evcxr_jupyter has no --version; its binary names its source folder (evcxr_jupyter-X.Y.Z/src/…).
  if command -v evcxr_jupyter >/dev/null && grep -qa "evcxr_jupyter-$EVCXR_VERSION/" "$(command -v evcxr_jupyter)"; then
    command -v evcxr_jupyter
    return
  fi
  local bin="$CACHE/evcxr-$EVCXR_VERSION/bin/evcxr_jupyter"
  if [ ! -x "$bin" ]; then
    log "installing evcxr_jupyter $EVCXR_VERSION into $CACHE (about 10 minutes, once)"
    CARGO_TARGET_DIR="$CACHE/evcxr-install-target" \
      cargo install evcxr_jupyter --locked --version "$EVCXR_VERSION" --root "$CACHE/evcxr-$EVCXR_VERSION" >&2
    rm -rf "$CACHE/evcxr-install-target"
  fi
  echo "$bin"
}

# jupyter with nbconvert: from PATH at the pinned version, else a virtualenv in the cache.
find_jupyter() {
  if command -v jupyter >/dev/null && [ "$(jupyter nbconvert --version 2>/dev/null)" = "$NBCONVERT_VERSION" ]; then
    command -v jupyter
    return
  fi
  local venv="$CACHE/venv"
  if [ ! -x "$venv/bin/jupyter-nbconvert" ] || [ "$("$venv/bin/jupyter" nbconvert --version)" != "$NBCONVERT_VERSION" ]; then
    log "installing nbconvert $NBCONVERT_VERSION into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet "nbconvert==$NBCONVERT_VERSION" "nbclient==$NBCLIENT_VERSION" >&2
  fi
  echo "$venv/bin/jupyter"
}

# The kernel spec, the build folder and the variables the kernel needs.
setup_env() {
  EVCXR=$(find_evcxr)
  JUPYTER=$(find_jupyter)
  local kernel_dir="$CACHE/jupyter/kernels/rust"
  mkdir -p "$kernel_dir"
  cat >"$kernel_dir/kernel.json" <<JSON
{
  "argv": ["$EVCXR", "--control_file", "{connection_file}"],
  "display_name": "Rust (tinygpt)",
  "language": "rust",
  "interrupt_mode": "message"
}
JSON
  export JUPYTER_PATH="$CACHE/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
  local lock_hash
  lock_hash=$(awk '/^\[\[package\]\]/ { if (block ~ /\nsource = /) printf "%s", block; block = "" } { block = block $0 "\n" }
                   END { if (block ~ /\nsource = /) printf "%s", block }' "$ROOT/Cargo.lock" | sha256sum | cut -c1-12)
  export EVCXR_TMPDIR="$CACHE/evcxr-build/$lock_hash"
  # A new set of crate versions starts from the newest earlier build folder: cargo then
  # recompiles only what changed instead of everything (its fingerprints keep this correct).
  # (`|| true`: on a fresh cache there is none, and `ls` fails, which pipefail would make fatal.)
  local newest
  newest=$(ls -dt "$CACHE"/evcxr-build/*/ 2>/dev/null | head -1 || true)
  if [[ ! -d "$EVCXR_TMPDIR" && -n "$newest" ]]; then
    cp -a "${newest%/}" "$EVCXR_TMPDIR"
  fi
  mkdir -p "$EVCXR_TMPDIR" "$CACHE/evcxr-build/.cargo"
  touch "$EVCXR_TMPDIR"
  # Keep the build folders of the two most recent lock files; older ones only take disk space.
  ls -dt "$CACHE"/evcxr-build/*/ 2>/dev/null | tail -n +3 | xargs -r rm -rf
  # Cargo merges the config files of every folder above where it runs; evcxr writes its own
  # .cargo/config.toml inside the build folder, so ours goes one level up.
  cp "$ROOT/notebooks/cargo-config.toml" "$CACHE/evcxr-build/.cargo/config.toml"
  # The notebooks build against the same patched candle-core as the workspace (vendor/candle-core).
  printf '\n[patch.crates-io]\ncandle-core = { path = "%s" }\n' "$ROOT/vendor/candle-core" \
    >>"$CACHE/evcxr-build/.cargo/config.toml"
  # Under `cargo test`, cargo's variables for the test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME …)
  # would reach evcxr's cargo, and build scripts that watch them would make it rebuild every
  # dependency whenever the notebooks run from the tests rather than from JupyterLab.
  local var
  for var in $(compgen -e | grep '^CARGO_' | grep -v '^CARGO_HOME$'); do unset "$var"; done
  unset CARGO OUT_DIR
  # evcxr runs cargo inside its build folder, outside this checkout: name the pinned toolchain.
  export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")}
  # Each cell is a shared library that links Rust's standard library dynamically and is loaded
  # with dlopen; evcxr's relative rpath to the standard library breaks in a build folder this
  # deep, so tell the loader where it is.
  export LD_LIBRARY_PATH="$(rustc --print target-libdir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

case "${1:-}" in
  setup)
    setup_env
    log "kernel 'rust' registered in $CACHE/jupyter; evcxr builds in $EVCXR_TMPDIR"
    ;;
  env)
    setup_env
    echo "JUPYTER_PATH=$JUPYTER_PATH"
    echo "EVCXR_TMPDIR=$EVCXR_TMPDIR"
    ;;
  lab)
    setup_env
    venv_dir=$(dirname "$(dirname "$JUPYTER")")
    if ! "$JUPYTER" lab --version >/dev/null 2>&1; then
      log "installing JupyterLab $JUPYTERLAB_VERSION into $venv_dir"
      "$venv_dir/bin/pip" install --quiet "jupyterlab==$JUPYTERLAB_VERSION" >&2
    fi
    cd "$ROOT/notebooks" && exec "$JUPYTER" lab "${@:2}"
    ;;
  execute)
    [ $# -eq 3 ] || { echo "usage: $0 execute IN.ipynb OUT.ipynb" >&2; exit 2; }
    setup_env
    in=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
    out_dir=$(mkdir -p "$(dirname "$3")" && cd "$(dirname "$3")" && pwd)
    # The kernel starts in the notebook's own folder, so `:dep tinygpt = { path = "../tinygpt-lib" }` resolves.
    "$JUPYTER" nbconvert --to notebook --execute --allow-errors \
      --ExecutePreprocessor.kernel_name=rust \
      --ExecutePreprocessor.timeout="${TINYGPT_CELL_TIMEOUT:-3600}" \
      --ExecutePreprocessor.startup_timeout=120 \
      --output-dir "$out_dir" --output "$(basename "$3")" "$in"
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
