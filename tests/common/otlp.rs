//! An OTLP/gRPC trace receiver in the test process (the collector's
//! `TraceService`, from opentelemetry-proto): records every span exported to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::wait::wait_until;

/// One exported span, ids in lowercase hex (`parent` empty for a root).
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace: String,
    pub id: String,
    pub parent: String,
    pub service: String,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub status_message: String,
    pub attributes: Vec<(String, String)>,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| value(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status = s.status.clone().unwrap_or_default();
                    got.push(Span {
                        name: s.name,
                        trace: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        service: service.clone(),
                        status: status.code,
                        status_message: status.message,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        self.0.lock().unwrap().extend(got);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The receiver, serving until dropped.
pub struct Receiver {
    port: u16,
    spans: Sink,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind OTLP");
        let port = listener.local_addr().expect("OTLP addr").port();
        let spans = Sink::default();
        let svc = TraceServiceServer::new(spans.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Receiver { port, spans, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.0.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) until `pred` holds for the spans received.
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Span]) -> bool) {
        let sink = self.spans.clone();
        wait_until(timeout, what, move || pred(&sink.0.lock().unwrap())).await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
