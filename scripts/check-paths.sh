#!/usr/bin/env bash
# No absolute path of a developer's machine in the repository or the binary: run directories,
# home directories, fixed files in shared temporary directories (part 6 of issue 35).
#
#   scripts/check-paths.sh                  the tracked text files (scripts/test.sh runs this first)
#   scripts/check-paths.sh --binary FILE    also FILE's read-only data (where string literals go)
#                                           holds no path of this checkout
#
# Exits 1 and lists FILE:LINE: TEXT of each hit. A path that is fine in one place goes in the
# allow-list below with the reason, never into the pattern.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# A machine path: a home directory (root's, or one under home or Users), a work or mount directory
# (work, workspace, mnt, media at the top of the file system), a fixed name in a shared temporary
# directory (tmp, var/tmp, dev/shm: another user can take or read it; use mktemp / tempfile), or
# a Windows profile. Only where the path starts a word, so relative paths (a work folder inside src) and
# `$RUNS/main` are not hits. System paths (the interpreter under usr/bin, dev/null, proc/self,
# etc/passwd) and the bare mount points are not machine paths and do not match. The pattern is
# assembled from the top-level names (S is the separator) so that this file holds none of them.
S=/
name='[A-Za-z0-9_.-]+'
tmpname='[A-Za-z0-9_.$-]'
pattern="(^|[^A-Za-z0-9_.~\$}-])(${S}root${S}|${S}home${S}${name}|${S}Users${S}${name}|${S}work${S}|${S}workspaces?${S}|${S}mnt${S}|${S}media${S}|${S}tmp${S}${tmpname}|${S}var${S}tmp${S}${tmpname}|${S}dev${S}shm${S}${tmpname}|[A-Za-z]:\\\\+Users\\\\+)"

# Allow-list: FILE (a path relative to the repository root) and why its hits are not machine paths.
allowed=(
  # The sandbox mounts its own private tmpfs on the temporary directories; the names its tests
  # write there exist only inside one run's namespace.
  crates/creme-cli/src/sandbox/tests.rs
)

# The tracked files (a checkout without git: every file but build outputs).
if files=$(git ls-files 2>/dev/null) && [ -n "$files" ]; then :; else
  files=$(find . -type f -not -path './.git/*' -not -path './target/*' -not -path './web/node_modules/*' | sed 's|^\./||')
fi

hits=0
while IFS= read -r f; do
  [ -f "$f" ] || continue
  for a in "${allowed[@]}"; do [ "$f" = "$a" ] && continue 2; done
  # -I: binary files (fuzz corpora, regressions) are inputs, not paths.
  if out=$(grep -nIE -- "$pattern" "$f"); then
    while IFS= read -r line; do
      echo "$f:${line:0:200}"
      hits=$((hits + 1))
    done <<<"$out"
  fi
done <<<"$files"

# The binary: string literals live in .rodata; a path of this checkout there is a location baked
# in at build time (debug info and panic locations of dependencies are not looked at).
if [ "${1:-}" = --binary ]; then
  bin=${2:?--binary needs a FILE}
  data=$(mktemp)
  trap 'rm -f "$data"' EXIT
  objcopy -O binary --only-section=.rodata "$bin" "$data"
  if grep -qaF -- "$root" "$data"; then
    echo "$bin: its read-only data holds this checkout's path ($root):"
    grep -aoE -- "$root[^[:cntrl:]]{0,60}" "$data" | head -5 | sed 's/^/  /'
    hits=$((hits + 1))
  fi
fi

if [ "$hits" -gt 0 ]; then
  echo "check-paths: $hits machine path(s) above: write them relative (to the repository, the run"
  echo "directory: \$RUNS), from a variable (\$HOME, \$CREME_CACHE_DIR, \$CREME_DATA_DIR) or a fresh"
  echo "temporary directory (mktemp -d, tempfile), or add the file to the allow-list with the reason"
  exit 1
fi
echo "check-paths: no machine paths in $(wc -l <<<"$files") tracked files${bin:+ or $bin}"
