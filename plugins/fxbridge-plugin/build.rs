//! Encodes the component type of each world in `wit/transform.wit` into
//! `$OUT_DIR/<world>.component-type`. `export_plugin!` places the chosen
//! world's bytes in a `component-type:*` custom section, which is how the
//! wasm32-wasip2 linker (wit-component) learns the component's exports, so
//! a plugin exports exactly the hooks of its world.

use std::path::{Path, PathBuf};

fn main() {
    let wit_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    println!("cargo:rerun-if-changed={}", wit_dir.display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(&wit_dir)
        .unwrap_or_else(|e| panic!("cannot parse WIT in {}: {e:?}", wit_dir.display()));
    for world in ["pre-transform", "post-transform", "transform"] {
        let world_id = resolve
            .select_world(&[package], Some(world))
            .unwrap_or_else(|e| panic!("WIT world {world}: {e:?}"));
        let bytes = wit_component::metadata::encode(
            &resolve,
            world_id,
            wit_component::StringEncoding::UTF8,
            None,
        )
        .unwrap_or_else(|e| panic!("cannot encode WIT world {world}: {e:?}"));
        let path = out_dir.join(format!("{world}.component-type"));
        std::fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
