//! Every checked-in fuzz input, replayed as an ordinary test: the seeds in
//! `fuzz/corpus/<target>/` and the crashes fuzzing once found, kept in
//! `fuzz/regressions/<target>/`, each run once through the target's body
//! (the code the libFuzzer binary runs). No instrumented build: this is what
//! CI checks; `fuzz/run.sh` is for real fuzzing sessions.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use meshscale_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files directly under `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Names of the subdirectories of `dir` (or of files with `ext`), sorted.
fn names(dir: &Path, ext: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| match ext {
            None => p.is_dir(),
            Some(ext) => p.extension().is_some_and(|e| e == ext),
        })
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    out.sort();
    out
}

/// Runs `target`'s corpus and kept regressions; fails naming every input
/// that panicked.
fn replay(target: &str) {
    let run = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("{target} is not in TARGETS"))
        .1;
    let dir = fuzz_dir();
    let corpus = inputs(&dir.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "{target}: no seeds in fuzz/corpus/{target}/"
    );
    let regressions = inputs(&dir.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs panicked (message above): {failed:?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
                if stringify!($name) == "noise_h2" {
                    // Its store is a throwaway; the open handle does not mind.
                    let _ = std::fs::remove_dir_all(meshscale_fuzz_targets::noise_h2::data_dir());
                }
            }
        )*

        /// A target added to `fuzz/` without a replay test here (or the
        /// reverse) would silently go unchecked in CI.
        #[test]
        fn every_target_is_replayed() {
            let mut tested = vec![$(stringify!($name).to_string()),*];
            tested.sort();
            let mut registered: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
            registered.sort();
            assert_eq!(registered, tested, "TARGETS vs the tests in replay.rs");
            let dir = fuzz_dir();
            assert_eq!(names(&dir.join("fuzz_targets"), Some("rs")), tested, "fuzz/fuzz_targets/*.rs");
            assert_eq!(names(&dir.join("corpus"), None), tested, "fuzz/corpus/*/");
            let regressions = dir.join("regressions");
            if regressions.is_dir() {
                for kept in names(&regressions, None) {
                    assert!(tested.contains(&kept), "fuzz/regressions/{kept}/ names no target");
                }
            }
        }
    };
}

replay_tests!(
    admission_review,
    config_yaml,
    derp_frames,
    disco,
    map_request,
    map_stream,
    noise_h2,
    noise_initiation,
    packetfilter,
    register_request,
    sidecar_localapi,
    stun_binding,
    wire_framing,
);
