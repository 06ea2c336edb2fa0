//! The README shows code that the workspace compiles: "Testing your upgrade" shows
//! `tests/upgrade.rs` as it is, and "Live hand-off" the `handoff-lines` example, so that the
//! examples there are code that compiles (and, for the test, passes).

#[test]
fn the_readme_shows_the_upgrade_test_verbatim() {
    let readme = include_str!("../../../README.md");
    let test = include_str!("upgrade.rs");
    assert!(
        readme.contains(&format!("```rust\n{test}```\n")),
        "README.md must show examples/testing-axum/tests/upgrade.rs verbatim in a rust block"
    );
}

/// The README's "Live hand-off" shows `examples/handoff-lines/main.rs` as it is (below its
/// module docs), so that the example there compiles, as a binary of the examples package.
#[test]
fn the_readme_shows_the_handoff_example_verbatim() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../../handoff-lines/main.rs");
    let code: String = example
        .lines()
        .skip_while(|line| line.starts_with("//!") || line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        readme.contains(&format!("```rust\n{code}```\n")),
        "README.md must show examples/handoff-lines/main.rs (without its module docs) verbatim \
         in a rust block"
    );
}
