#!/usr/bin/env bash
# What DeepSpeed needs to JIT-compile its C++ op (deepspeed_shm_comm, built the first time a CPU run starts): a C++
# compiler, ninja on PATH and the headers of the venv's Python. Missing ones are installed with apt-get when this runs
# as root on Debian/Ubuntu; otherwise one line says what is missing and the exit code is 1. Then the op is built once
# into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), so that no run waits ~30 s for it.
# Usage: bash scripts/toolchain.sh [VENV_DIR] [--check]    (--check: only check, install and build nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv check_only=
for arg in "$@"; do
  case $arg in
    --check) check_only=1 ;;
    *) venv=$arg ;;
  esac
done
python="$venv/bin/python"
cxx=${CXX:-c++}
export PATH="$PATH:$venv/bin"  # pip's ninja (a DeepSpeed dependency) serves when no system one is on PATH

headers() { "$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])'; }
missing() {  # the missing pieces, one per line, each "what|Debian package"
  command -v "$cxx" >/dev/null || echo "a C++ compiler ($cxx)|g++"
  command -v ninja >/dev/null || echo "ninja|ninja-build"
  local inc
  inc="$(headers)" || { echo "a working $python|"; return; }
  [[ -f "$inc/Python.h" ]] || echo "Python.h ($inc)|$([[ $inc == /usr/include/* ]] && echo "${inc#/usr/include/}-dev")"
}

split() {  # $lack -> arrays whats, packages
  whats=() packages=()
  while IFS='|' read -r what package; do
    [[ -n "$what" ]] && whats+=("$what")
    [[ -n "$package" ]] && packages+=("$package")
  done <<<"$lack"
}

lack="$(missing)"
split
if [[ -n "$lack" && -z "$check_only" && $EUID -eq 0 && ${#packages[@]} -gt 0 ]] && command -v apt-get >/dev/null; then
  echo "toolchain.sh: installing ${packages[*]} (DeepSpeed compiles a C++ op on first use)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${packages[@]}"; } >/dev/null 2>&1
  lack="$(missing)"
  split
fi
if [[ -n "$lack" ]]; then
  list="$(printf '%s, ' "${whats[@]}")"
  hint="apt-get install ${packages[*]}"
  ((${#packages[@]})) || hint="your system's packages"
  echo "toolchain.sh: DeepSpeed cannot compile its C++ op (every DeepSpeed run on CPU needs it): missing" \
       "${list%, }; install them ($hint) and run: bash scripts/toolchain.sh $venv" >&2
  exit 1
fi
[[ -n "$check_only" ]] && exit 0

# Build once now (seconds when already built): a run, a test or a SLURM job then only loads it.
if ! out="$(DS_ACCELERATOR=cpu "$python" -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' 2>&1)"
then
  echo "toolchain.sh: building DeepSpeed's deepspeed_shm_comm op failed: $(grep -v '^\s*$' <<<"$out" | tail -n1)" >&2
  exit 1
fi
echo "toolchain.sh: $cxx, ninja and Python.h found; DeepSpeed's CPU op is built" \
     "(${TORCH_EXTENSIONS_DIR:-~/.cache/torch_extensions})" >&2
