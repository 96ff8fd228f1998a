//! Inputs the campaigns found, minimised and kept: each file in `regressions/` is named
//! `<target>-<what>.<ext>` and must be refused or accepted by its target without a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

#[test]
fn every_recorded_crash_is_handled() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions");
    let scratch = temper_fuzz::Scratch::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("regressions/") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let target = temper_fuzz::TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{}-", t.name)))
            .unwrap_or_else(|| panic!("{name}: no target is named by its prefix"));
        let input = std::fs::read(&path).expect("a regression input");
        let result = catch_unwind(AssertUnwindSafe(|| (target.run)(&scratch, &input)));
        assert!(result.is_ok(), "{name}: {} panics", target.name);
        checked += 1;
    }
    assert!(checked > 0, "no regression inputs in {dir}");
}
