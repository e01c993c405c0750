//! A controllable OpenFx gateway: the real generated `pb.FxGateway` server
//! (tonic) in the test process, on a loopback port it keeps across restarts.
//!
//! By default it answers like OpenFx's echo function: `Msg` is the input as a
//! (lossy) UTF-8 string, because `Msg` is a protobuf `string`. A test can make it
//! slow (for all inputs or one), hold an input until released, fail the next N
//! calls with a gRPC code, or stop and start again; every call is recorded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fxbridge::proto::fx_gateway_server::{FxGateway, FxGatewayServer};
use fxbridge::proto::{Empty, InvokeServiceRequest, Message};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// One Invoke call as the gateway received it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub function: String,
    pub input: Vec<u8>,
    /// The code it was failed with, `None` when it was answered.
    pub failed: Option<Code>,
    pub at: Instant,
    /// The request's ASCII metadata (its HTTP headers, `content-type`,
    /// `user-agent`, ... included), in order.
    pub metadata: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    invocations: Vec<Invocation>,
    fail_next: VecDeque<Code>,
    delay_all: Duration,
    delay_for: HashMap<Vec<u8>, Duration>,
    in_flight: usize,
    max_in_flight: usize,
    /// Put before the replies of a function, like OpenFx runtimes that
    /// prefix the language.
    prefix: HashMap<String, String>,
}

struct Shared {
    state: Mutex<State>,
    /// Inputs held back until released.
    held: watch::Sender<HashSet<Vec<u8>>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The service of one server run; `stop` cuts its pending calls short.
#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// Counts a call in flight for as long as it lives (even if tonic drops it).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

#[tonic::async_trait]
impl FxGateway for Service {
    async fn invoke(
        &self,
        request: Request<InvokeServiceRequest>,
    ) -> Result<Response<Message>, Status> {
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k, v)),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let req = request.into_inner();
        let input = req.input.to_vec();
        let (fail, delay, prefix) = {
            let mut s = self.shared.lock();
            let fail = s.fail_next.pop_front();
            s.invocations.push(Invocation {
                function: req.service.clone(),
                input: input.clone(),
                failed: fail,
                at: Instant::now(),
                metadata,
            });
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            let delay = s.delay_for.get(&input).copied().unwrap_or(s.delay_all);
            (
                fail,
                delay,
                s.prefix.get(&req.service).cloned().unwrap_or_default(),
            )
        };
        let _guard = InFlight(Arc::clone(&self.shared));
        if let Some(code) = fail {
            return Err(Status::new(code, "could not invoke: test gateway failure"));
        }
        let mut held = self.shared.held.subscribe();
        let work = async {
            tokio::time::sleep(delay).await;
            let _ = held.wait_for(|h| !h.contains(&input)).await;
        };
        tokio::select! {
            () = work => {}
            () = self.stop.cancelled() => {
                return Err(Status::unavailable("test gateway stopping"));
            }
        }
        Ok(Response::new(Message {
            msg: prefix + &String::from_utf8_lossy(&input),
        }))
    }

    async fn health_check(&self, _request: Request<Empty>) -> Result<Response<Message>, Status> {
        Ok(Response::new(Message { msg: "OK".into() }))
    }
}

/// The test gateway; stopped on drop.
pub struct TestGateway {
    port: u16,
    shared: Arc<Shared>,
    server: Option<(CancellationToken, JoinHandle<()>)>,
}

impl TestGateway {
    /// Starts an echo gateway on a free loopback port.
    pub async fn start() -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let port = listener.local_addr().expect("gateway addr").port();
        let mut g = TestGateway {
            port,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                held: watch::channel(HashSet::new()).0,
            }),
            server: None,
        };
        g.serve(listener);
        g
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let svc = Service {
            shared: Arc::clone(&self.shared),
            stop: stop.clone(),
        };
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(FxGatewayServer::new(svc))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await;
        });
        self.server = Some((stop, task));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, for `gateway.url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next `n` calls fail with `code` (after being recorded).
    pub fn fail_next(&self, n: usize, code: Code) {
        self.shared
            .lock()
            .fail_next
            .extend(std::iter::repeat_n(code, n));
    }

    /// Drops failures still queued by [`fail_next`](Self::fail_next).
    pub fn clear_failures(&self) {
        self.shared.lock().fail_next.clear();
    }

    /// Every reply of `function` starts with `prefix` (the stock runtimes
    /// answer `[Go] <input>`).
    pub fn reply_prefix(&self, function: &str, prefix: &str) {
        self.shared
            .lock()
            .prefix
            .insert(function.to_string(), prefix.to_string());
    }

    /// Every call takes at least `d` (unless a per-input delay applies).
    pub fn delay_all(&self, d: Duration) {
        self.shared.lock().delay_all = d;
    }

    /// Calls with exactly this input take `d`.
    pub fn delay_input(&self, input: &[u8], d: Duration) {
        self.shared.lock().delay_for.insert(input.to_vec(), d);
    }

    /// Calls with this input are not answered until [`release`](Self::release).
    pub fn hold(&self, input: &[u8]) {
        self.shared.held.send_modify(|h| {
            h.insert(input.to_vec());
        });
    }

    /// Answers every held call (and stops holding).
    pub fn release(&self) {
        self.shared.held.send_modify(HashSet::clear);
    }

    /// Every call so far, in arrival order.
    pub fn invocations(&self) -> Vec<Invocation> {
        self.shared.lock().invocations.clone()
    }

    pub fn calls(&self) -> usize {
        self.shared.lock().invocations.len()
    }

    /// Calls with this input so far (failed ones included).
    pub fn calls_with(&self, input: &[u8]) -> usize {
        self.shared
            .lock()
            .invocations
            .iter()
            .filter(|i| i.input == input)
            .count()
    }

    /// Distinct inputs of the calls that were answered.
    pub fn answered_inputs(&self) -> HashSet<Vec<u8>> {
        self.shared
            .lock()
            .invocations
            .iter()
            .filter(|i| i.failed.is_none())
            .map(|i| i.input.clone())
            .collect()
    }

    /// Calls being served right now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// The most calls ever served at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.lock().max_in_flight
    }

    /// Stops serving: pending calls end with UNAVAILABLE, the port is closed, and
    /// new calls are refused (the client sees UNAVAILABLE).
    pub async fn stop(&mut self) {
        if let Some((stop, mut task)) = self.server.take() {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Serves again on the same port (retrying the bind for up to 5 s).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "the gateway is running");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind the gateway port {} again: {e}", self.port),
            }
        };
        self.serve(listener);
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.cancel();
            task.abort();
        }
    }
}

/// A gateway that serves `pb.FxGateway` and answers every call with gRPC
/// status OK and a body that is not a protobuf `Message` (a truncated
/// varint), counting the calls. Stopped on drop.
pub struct MalformedGateway {
    port: u16,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Malformed(Arc<std::sync::atomic::AtomicUsize>);

impl tonic::server::NamedService for Malformed {
    const NAME: &'static str = "pb.FxGateway";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Malformed {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // One gRPC frame: uncompressed, length 2, then 0xff 0xff (a varint
        // that never ends), followed by the trailers of a successful call.
        let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, tonic::Status>> = vec![
            Ok(hyper::body::Frame::data(frame)),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(body))
            .expect("response");
        std::future::ready(Ok(response))
    }
}

impl MalformedGateway {
    pub async fn start() -> MalformedGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let port = listener.local_addr().expect("gateway addr").port();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let svc = Malformed(Arc::clone(&calls));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        MalformedGateway { port, calls, task }
    }

    /// `http://127.0.0.1:<port>`, for `gateway.url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for MalformedGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}
