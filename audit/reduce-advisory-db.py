#!/usr/bin/env python3
"""Refreshes audit/advisory-db/, the checked-in RustSec snapshot that
audit/deny.sh checks advisories against when the live database cannot be
fetched: copies from a clone of https://github.com/RustSec/advisory-db only
the advisories of crates named in Cargo.lock, and records the clone's
commit and date in audit/advisory-db/SNAPSHOT.

  audit/reduce-advisory-db.py ~/.cargo/advisory-dbs/advisory-db-3157b0e258782691

Re-run after Cargo.lock gains crates, and whenever a newer clone is at hand."""
import os, shutil, subprocess, sys, tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "advisory-db")

def main():
    clone = sys.argv[1]
    git = lambda *a: subprocess.run(["git", "-C", clone, *a], check=True,
                                    capture_output=True, text=True).stdout.strip()
    commit, date = git("log", "-1", "--format=%H %cI").split()
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        names = {p["name"] for p in tomllib.load(f)["package"]}
    shutil.rmtree(OUT, ignore_errors=True)
    kept = 0
    for name in sorted(os.listdir(os.path.join(clone, "crates"))):
        if name in names:
            shutil.copytree(os.path.join(clone, "crates", name), os.path.join(OUT, "crates", name))
            kept += len(os.listdir(os.path.join(OUT, "crates", name)))
    with open(os.path.join(OUT, "SNAPSHOT"), "w") as f:
        f.write(f"source = https://github.com/RustSec/advisory-db\n"
                f"commit = {commit}\n"
                f"date = {date}\n"
                f"advisories = {kept} (of the crates in Cargo.lock)\n")
    print(f"advisory-db snapshot {date} ({commit[:12]}): {kept} advisories for {len(names)} locked crates")

main()
