//! An in-process stand-in for the OpenFx gateway, for the demo and the benchmark.
//!
//! It serves the real `pb.FxGateway` interface over real gRPC and answers Invoke
//! like OpenFx's stock echo function: the reply is the input, optionally behind
//! a language prefix such as `[Go] ` (as the current runtime templates do). A
//! non-UTF-8 input is answered with its lossy UTF-8 rendering, because `Msg` is a
//! protobuf string. It is not a gateway: it runs no functions.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::proto::fx_gateway_server::{FxGateway, FxGatewayServer};
use crate::proto::{Empty, InvokeServiceRequest, Message};

/// The echo function's behaviour.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Put in front of every reply, e.g. `[Go] `.
    pub prefix: String,
}

#[tonic::async_trait]
impl FxGateway for Echo {
    async fn invoke(
        &self,
        request: Request<InvokeServiceRequest>,
    ) -> Result<Response<Message>, Status> {
        let req = request.into_inner();
        let mut msg = String::with_capacity(self.prefix.len() + req.input.len());
        msg.push_str(&self.prefix);
        msg.push_str(&String::from_utf8_lossy(&req.input));
        Ok(Response::new(Message { msg }))
    }

    async fn health_check(&self, _request: Request<Empty>) -> Result<Response<Message>, Status> {
        Ok(Response::new(Message { msg: "OK".into() }))
    }
}

/// Serves `echo` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    echo: Echo,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr: SocketAddr = listener.local_addr().context("listener has no address")?;
    tonic::transport::Server::builder()
        .add_service(FxGatewayServer::new(echo))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .with_context(|| format!("stand-in gateway on {addr} failed"))
}
