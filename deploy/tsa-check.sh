#!/usr/bin/env bash
# deploy/tsa-check.sh [BUILD_DIR]: clang's thread-safety analysis (-Wthread-safety, as errors) over every
# production source, with the flags CMake gave it in BUILD_DIR (default build)/compile_commands.json. The
# build itself is gcc's; this only parses (-fsyntax-only), so it costs a fraction of a second build. The locks
# it checks are abseil's (absl::Mutex, ABSL_GUARDED_BY and friends), whose annotations clang reads.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
clang=$(command -v clang++-16 || true)
[ -n "$clang" ] || { echo "tsa-check: clang++-16 is missing (deploy/install-deps.sh installs it)" >&2; exit 1; }
[ -f "$build/compile_commands.json" ] || { echo "tsa-check: no $build/compile_commands.json; build first" >&2; exit 1; }
python3 - "$PWD" "$build/compile_commands.json" "$clang" <<'PY'
import concurrent.futures, json, os, shlex, subprocess, sys
root, db, clang = sys.argv[1], sys.argv[2], sys.argv[3]
prod = tuple(os.path.join(root, d) + os.sep for d in ("base", "wire", "net", "sandbox", "agent"))
jobs = {}  # by file: a source compiled into two targets is checked once
for e in json.load(open(db)):
    f = os.path.abspath(os.path.join(e["directory"], e["file"]))
    if not f.startswith(prod) or not f.endswith(".cc"):
        continue
    args, out, skip = shlex.split(e["command"]), [], False
    args = [a for a in args if not a.endswith("ccache")]
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if a in ("-c", "-MD") or a.startswith("-fdiagnostics-color"):
            continue
        out.append(a)
    # Ours last: every other warning off (gcc's set is not clang's), thread safety on, as errors.
    jobs[f] = (f, e["directory"], [clang, "-fsyntax-only"] + out +
               ["-Wno-everything", "-Wthread-safety", "-Werror=thread-safety"])
if len(jobs) < 50:
    sys.exit(f"tsa-check: only {len(jobs)} production sources in {db}")
def run(job):
    f, d, cmd = job
    r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
    return f, r.returncode, r.stderr
failed = 0
with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    for f, rc, err in pool.map(run, [jobs[f] for f in sorted(jobs)]):
        if rc != 0:
            failed += 1
            sys.stderr.write(err)
print(f"tsa-check: {len(jobs)} sources, {failed} with thread-safety errors")
sys.exit(1 if failed else 0)
PY
