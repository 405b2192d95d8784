//! Build the bundled transforms (the list is the SDK's, defined once) and embed their bytes.

include!("guest_build.rs");

fn main() {
    let guests = build_guests(&vast_transform_sdk::transforms::BUNDLED);
    let mut code = String::new();
    let mut bundled = String::new();
    for ((konst, file), pkg) in guests.iter().zip(vast_transform_sdk::transforms::BUNDLED) {
        writeln!(
            code,
            "/// The `{pkg}` component's bytes.\npub const {konst}: &[u8] = include_bytes!({:?});",
            path_str(file)
        )
        .unwrap();
        writeln!(bundled, "    ({pkg:?}, {konst}),").unwrap();
    }
    writeln!(
        code,
        "/// The bundled transforms embedded in the host: (name, component bytes).\n\
         pub const BUNDLED: &[(&str, &[u8])] = &[\n{bundled}];"
    )
    .unwrap();
    write_out("artifacts.rs", &code);
}
