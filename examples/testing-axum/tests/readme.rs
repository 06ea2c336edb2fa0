//! The README's "Testing your upgrade" shows `tests/upgrade.rs` as it is, so that the example
//! there is code that compiles and passes.

#[test]
fn the_readme_shows_the_upgrade_test_verbatim() {
    let readme = include_str!("../../../README.md");
    let test = include_str!("upgrade.rs");
    assert!(
        readme.contains(&format!("```rust\n{test}```\n")),
        "README.md must show examples/testing-axum/tests/upgrade.rs verbatim in a rust block"
    );
}
