#!/usr/bin/env bash
# Intel MKL for tinygpt's `mkl` feature: f32 matrix products on the CPU through MKL's sgemm
# instead of the gemm crate. MKL's static libraries come from Intel's PyPI wheel `mkl-static`;
# the three that sgemm needs (about 650 MB unpacked) go to ./.mkl/lib (git-ignored), where
# tinygpt-lib/build.rs finds them (or set TINYGPT_MKL_DIR to another folder with a lib/ inside).
#
#   scripts/mkl-env.sh setup                                 # once: ~250 MB download
#   cargo build --release --features mkl                     # then build as usual
#
# MKL is linked statically and sequentially: the binary needs nothing at run time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MKL_DIR="${TINYGPT_MKL_DIR:-$ROOT/.mkl}"
WHEEL="mkl-static==2026.2.0"
LIBS=(libmkl_intel_lp64.a libmkl_sequential.a libmkl_core.a)

setup() {
  local lib="$MKL_DIR/lib" have=1 name
  for name in "${LIBS[@]}"; do [[ -f "$lib/$name" ]] || have=0; done
  if ((have)); then echo "MKL already in $lib"; return; fi
  mkdir -p "$lib"
  if [[ ! -x "$MKL_DIR/venv/bin/pip" ]]; then python3 -m venv "$MKL_DIR/venv"; fi
  local wheels; wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' RETURN
  "$MKL_DIR/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --dest "$wheels" "$WHEEL"
  # Only the three archives sgemm needs; each is written under a temporary name, then renamed.
  "$MKL_DIR/venv/bin/python" - "$wheels"/mkl_static-*.whl "$lib" "${LIBS[@]}" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    members = {os.path.basename(m): m for m in z.namelist() if m.endswith(".a")}
    for name in names:
        if name not in members:
            sys.exit(f"error: {wheel} has no {name}")
        tmp = os.path.join(dest, name + ".part")
        with z.open(members[name]) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, os.path.join(dest, name))
PY
  echo "MKL ready in $lib ($WHEEL); build with: cargo build --release --features mkl"
}

case "${1:-}" in
  setup) setup ;;
  *) echo "usage: $0 setup" >&2; exit 2 ;;
esac
