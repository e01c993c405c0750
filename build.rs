//! Compiles `proto/fxgateway.proto` with protox (pure Rust), so that a fresh
//! machine needs nothing but cargo: no `protoc` binary. Also tells the crate
//! which wasmtime it links (`FXBRIDGE_WASMTIME_VERSION`, from Cargo.lock): the
//! plugin compile cache is keyed by it.

/// The version of package `name` in Cargo.lock's text, if listed once.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{name}\"") {
            let version = lines.next()?.trim();
            return version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_string);
        }
    }
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let wasmtime = locked_version(&lock, "wasmtime").unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FXBRIDGE_WASMTIME_VERSION={wasmtime}");

    let proto = "proto/fxgateway.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `Input` as `Bytes`: the payload reaches the request without a copy.
        .bytes(".pb.InvokeServiceRequest.Input")
        .compile_fds(descriptors)?;
    Ok(())
}
