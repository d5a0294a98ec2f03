//! The README shows each example whole: these are the files it must show, as they are.

#[test]
fn the_readme_shows_each_example_as_it_is() {
    let readme = include_str!("../README.md");
    for (path, text) in [
        ("src/sessions.rs", include_str!("../src/sessions.rs")),
        ("bin/sessions.rs", include_str!("../bin/sessions.rs")),
        ("src/orderbook.rs", include_str!("../src/orderbook.rs")),
        ("bin/orderbook.rs", include_str!("../bin/orderbook.rs")),
        ("src/seats.rs", include_str!("../src/seats.rs")),
        ("bin/seats.rs", include_str!("../bin/seats.rs")),
    ] {
        let shown = format!("```rust\n// examples/{path}\n{text}```\n");
        assert!(readme.contains(&shown), "README.md does not show examples/{path} as it is: copy it in again");
    }
}
