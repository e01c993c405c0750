//! Compiles `proto/fxgateway.proto` with protox (pure Rust), so that a fresh
//! machine needs nothing but cargo: no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
