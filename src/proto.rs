//! Generated gRPC bindings for the OpenFx gateway (`proto/fxgateway.proto`).
//!
//! `package pb; service FxGateway`, so calls go to `/pb.FxGateway/Invoke`, the
//! exact method name a real OpenFx gateway serves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("pb");
