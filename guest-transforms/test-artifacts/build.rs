//! Build the example and test guests; expose their paths and a `foreach_guest!` macro.

include!("../artifacts/guest_build.rs");

/// Every guest that is not bundled: each needs a test named after it (see the macro).
const GUESTS: &[&str] = &[
    "team-enrich",
    "hostile",
    "init-fails",
    "traps-always",
    "fails-half",
    "traps-rarely",
    "loops-always",
    "legacy-v0-1",
];

fn main() {
    let mut code = String::new();
    let mut each = String::new();
    for ((konst, file), pkg) in build_guests(GUESTS).iter().zip(GUESTS) {
        writeln!(
            code,
            "/// Path of the `{pkg}` component.\npub const {konst}_PATH: &str = {:?};",
            path_str(file)
        )
        .unwrap();
        writeln!(each, "        $mac!({});", pkg.replace('-', "_")).unwrap();
    }
    // wasmtime's pattern: a test file calls `foreach_guest!(assert_test_exists)`, which names
    // a test function per guest, so a guest without a test does not compile.
    writeln!(
        code,
        "/// Calls `$mac!(guest_name)` for every guest.\n#[macro_export]\nmacro_rules! foreach_guest {{\n    ($mac:ident) => {{\n{each}    }};\n}}"
    )
    .unwrap();
    write_out("guests.rs", &code);
}
