//! Routing: which routes take a message, and each route's worker, which runs its
//! messages with the route's concurrency and ordering.
//!
//! The [`Router`] holds the current route [`Table`] behind an `ArcSwap`, so a
//! reload swaps it atomically; a message is dispatched against exactly one table
//! version, and its job keeps that version's route (plugin included) to the end.
//!
//! Every route belongs to a *session* (its own by default): the session that
//! received a message is the only one whose routes can take it. When several
//! routes of a session match one message, every one of them processes it, each
//! once; the source is acknowledged after all of them are done. Under MQTT 5
//! each distinct filter is subscribed with its own subscription identifier and
//! a delivery goes only to the routes of the identifiers it carries, so
//! overlapping filters (which MQTT 5 brokers deliver once per subscription) are
//! not processed twice. Under MQTT 3.1.1 the routes are found by matching the
//! topic.
//!
//! A message no route takes (its route was removed by a reload, or a filter
//! was left subscribed by an earlier configuration) goes to the *unrouted*
//! worker, which dead-letters it; it is acknowledged once the dead letter is
//! confirmed. Once [`Router::close`] ran, nothing is dispatched any more.
//!
//! A route's [`worker`] keeps per-topic order (`ordering: per-topic`): one message
//! per topic at a time, in arrival order, with up to `max_in_flight` topics in
//! parallel; with `ordering: none` up to `max_in_flight` messages run at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Release},
};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tracing::error;

use crate::ack::Completion;
use crate::config::{Order, Protocol, Retained};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::mqtt::inbound::{Closed, Delivery, Dispatch};
use crate::mqtt::Subscription;
use crate::pipeline::{self, Job, RouteCtx, Services, UnroutedJob};
use crate::topic::TopicFilter;

/// Messages of the unrouted dead letter in progress at once.
const UNROUTED_IN_FLIGHT: usize = 16;

/// A route of the current table: its context and the queue of its worker.
/// Cloning it shares the worker (which runs while any clone's queue sender lives).
#[derive(Clone)]
pub struct RouteEntry {
    pub ctx: Arc<RouteCtx>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Becomes true when the worker has finished every job it was given and its
    /// queue is closed: a successor may then start (per-topic order).
    pub finished: watch::Receiver<bool>,
}

/// How a route gets into a new table version.
pub enum Plan {
    /// Unchanged since the previous version: keep its worker, queue and plugin
    /// instances.
    Keep(RouteEntry),
    /// New or changed: start a worker for `ctx`, after `after` (the previous
    /// version's worker of the same route, if any) has finished.
    Start {
        ctx: Arc<RouteCtx>,
        after: Option<watch::Receiver<bool>>,
    },
}

/// One version of the routing table.
pub struct Table {
    pub routes: Vec<RouteEntry>,
    /// Per session: its subscriptions, one per distinct filter, with stable
    /// MQTT 5 identifiers.
    pub sessions: BTreeMap<String, Vec<Subscription>>,
    /// Subscription identifier -> indexes into `routes`.
    by_subscription: HashMap<usize, Vec<usize>>,
    /// The topic spaces of every dead-letter topic of this version (each
    /// route's and the unrouted one): a plugin's result must not land there
    /// unless its route allows it by name.
    guarded: Arc<Vec<TopicFilter>>,
    protocol: Protocol,
}

impl Table {
    /// The route called `name`, if this table has it.
    pub fn get(&self, name: &str) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| r.ctx.route.name() == name)
    }
}

/// Starts route workers and assembles a table.
pub struct TableBuilder {
    services: Arc<Services>,
    protocol: Protocol,
    /// Subscription identifiers handed out so far, by filter; kept across
    /// versions so an unchanged filter keeps its identifier.
    ids: HashMap<String, usize>,
    next_id: usize,
}

impl TableBuilder {
    pub fn new(services: Arc<Services>, protocol: Protocol) -> Self {
        TableBuilder {
            services,
            protocol,
            ids: HashMap::new(),
            next_id: 1,
        }
    }

    /// The subscription identifier of `filter`, assigned on first use.
    fn id(&mut self, filter: &str) -> usize {
        if let Some(id) = self.ids.get(filter) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(filter.to_string(), id);
        id
    }

    /// Builds a table from `plans`: kept entries carry on with their running
    /// worker; every started route gets a new worker, which waits for its
    /// predecessor (the same route's previous worker) before taking jobs.
    pub fn build(&mut self, plans: Vec<Plan>) -> Table {
        let mut entries = Vec::with_capacity(plans.len());
        for plan in plans {
            entries.push(match plan {
                Plan::Keep(entry) => entry,
                Plan::Start { ctx, after } => self.spawn(ctx, after),
            });
        }
        let mut sessions: BTreeMap<String, Vec<Subscription>> = BTreeMap::new();
        let mut by_subscription: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut guarded: Vec<TopicFilter> = entries
            .iter()
            .map(|e| {
                let r = &e.ctx.route;
                r.dead_letter.topic_space(&r.filter, r.name())
            })
            .collect();
        if let Ok(any) = TopicFilter::parse("#") {
            guarded.push(self.services.unrouted_dead_letter.topic_space(&any, "+"));
        }
        for (i, e) in entries.iter().enumerate() {
            let filter = e.ctx.route.filter.as_str().to_string();
            let qos = e.ctx.route.config.qos;
            let id = self.id(&filter);
            by_subscription.entry(id).or_default().push(i);
            let subs = sessions
                .entry(e.ctx.route.session().to_string())
                .or_default();
            match subs.iter_mut().find(|s| s.filter == filter) {
                // Two routes on one filter: one subscription, at the higher QoS.
                Some(s) => s.qos = s.qos.max(qos),
                None => subs.push(Subscription { filter, qos, id }),
            }
        }
        Table {
            routes: entries,
            sessions,
            by_subscription,
            guarded: Arc::new(guarded),
            protocol: self.protocol,
        }
    }

    fn spawn(&self, ctx: Arc<RouteCtx>, before: Option<watch::Receiver<bool>>) -> RouteEntry {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (done_tx, finished) = watch::channel(false);
        tokio::spawn(worker(
            Arc::clone(&ctx),
            Arc::clone(&self.services),
            rx,
            before,
            done_tx,
        ));
        RouteEntry {
            ctx,
            jobs,
            finished,
        }
    }
}

/// Dispatches deliveries against the current table.
pub struct Router {
    table: ArcSwap<Table>,
    /// The unrouted worker's queue; `None` once closed.
    unrouted: Mutex<Option<mpsc::UnboundedSender<UnroutedJob>>>,
    unrouted_finished: watch::Receiver<bool>,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(table: Table, services: Arc<Services>) -> Router {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, unrouted_finished) = watch::channel(false);
        let metrics = Arc::clone(&services.metrics);
        tokio::spawn(unrouted_worker(services, rx, done_tx));
        Router {
            table: ArcSwap::from_pointee(table),
            unrouted: Mutex::new(Some(tx)),
            unrouted_finished,
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Makes `table` current; returns the previous one (whose workers finish
    /// their queued jobs once it and its in-flight dispatches are dropped).
    pub fn swap(&self, table: Table) -> Arc<Table> {
        self.table.swap(Arc::new(table))
    }

    /// Stops dispatching for good: swaps in `empty` and closes the unrouted
    /// worker's queue. Returns what to wait for: every worker of the last table
    /// and the unrouted worker, each done once its jobs are.
    pub fn close(&self, empty: Table) -> Vec<watch::Receiver<bool>> {
        self.closed.store(true, Release);
        let old = self.swap(empty);
        let mut finished: Vec<_> = old.routes.iter().map(|r| r.finished.clone()).collect();
        finished.push(self.unrouted_finished.clone());
        if let Ok(mut q) = self.unrouted.lock() {
            q.take();
        }
        finished
    }
}

impl Dispatch for Router {
    fn dispatch(
        &self,
        msg: Message,
        delivery: &Delivery<'_>,
        completion: &Completion,
    ) -> Result<usize, Closed> {
        if self.closed.load(Acquire) {
            return Err(Closed);
        }
        let table = self.table.load();
        let of_session = |i: &usize| table.routes[*i].ctx.route.session() == delivery.session;
        let candidates: Vec<usize> =
            if table.protocol == Protocol::V5 && !delivery.subscription_ids.is_empty() {
                let mut idx: Vec<usize> = delivery
                    .subscription_ids
                    .iter()
                    .filter_map(|id| table.by_subscription.get(id))
                    .flatten()
                    .copied()
                    .filter(of_session)
                    .collect();
                idx.sort_unstable();
                idx.dedup();
                idx
            } else {
                (0..table.routes.len()).filter(of_session).collect()
            };
        let mut matched = 0usize;
        let mut jobs: Vec<(usize, Vec<String>)> = Vec::new();
        for i in candidates {
            let route = &table.routes[i].ctx.route;
            let Some(captures) = route.filter.matches(&msg.topic) else {
                continue;
            };
            matched += 1;
            // A retained message delivered because of a subscription (RETAIN
            // set) is the broker's stored state, not a new event.
            let skip = msg.retain
                && match route.config.retained {
                    Retained::Process => false,
                    Retained::Skip => true,
                    Retained::SkipOnResubscribe => {
                        (delivery.subscribed_before)(route.filter.as_str())
                    }
                };
            if skip {
                table.routes[i].ctx.metrics.count_retained_skip();
                continue;
            }
            jobs.push((i, captures));
        }
        if matched == 0 {
            self.metrics.unrouted();
            let queue = self.unrouted.lock().ok().and_then(|q| q.clone());
            let Some(queue) = queue else {
                return Err(Closed);
            };
            let job = UnroutedJob {
                msg,
                session: delivery.session.to_string(),
                done: completion.route(),
            };
            // The worker lives as long as its queue's sender, which this router holds.
            let _ = queue.send(job);
            return Ok(1);
        }
        let taken = jobs.len();
        let msg = Arc::new(msg);
        let now = Instant::now();
        for (i, captures) in jobs {
            let job = Job {
                msg: Arc::clone(&msg),
                captures,
                done: completion.route(),
                dispatched: now,
                guarded: Arc::clone(&table.guarded),
            };
            // A worker lives as long as its queue's sender, which this table holds.
            let _ = table.routes[i].jobs.send(job);
        }
        Ok(taken)
    }
}

/// Dead-letters the messages no route takes, until its queue closes and every
/// dead letter is confirmed (or the drain deadline passes).
async fn unrouted_worker(
    services: Arc<Services>,
    mut rx: mpsc::UnboundedReceiver<UnroutedJob>,
    finished: watch::Sender<bool>,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        if !open && running.is_empty() {
            break;
        }
        tokio::select! {
            () = services.shutdown.deadline_passed() => break,
            job = rx.recv(), if open && running.len() < UNROUTED_IN_FLIGHT => match job {
                Some(job) => running.push(pipeline::unrouted(&services, job)),
                None => open = false,
            },
            Some(()) = running.next() => {}
        }
    }
    let _ = finished.send(true);
}

/// Runs one route's jobs until its queue closes and every job has finished.
async fn worker(
    ctx: Arc<RouteCtx>,
    services: Arc<Services>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    predecessor: Option<watch::Receiver<bool>>,
    finished: watch::Sender<bool>,
) {
    // The route's previous version finishes first, so per-topic order holds
    // across a reload; new jobs queue meanwhile.
    if let Some(mut before) = predecessor {
        let _ = before.wait_for(|done| *done).await;
    }
    let limit = ctx.route.config.max_in_flight;
    let per_topic = ctx.route.config.ordering == Order::PerTopic;
    let mut queue = Queue::default();
    // The route's jobs run inside this task rather than one task each: no spawn
    // and no cross-task wake per message (measured: about 5% CPU per message).
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        while running.len() < limit {
            let Some((key, job)) = queue.next() else {
                break;
            };
            let (ctx, services) = (Arc::clone(&ctx), Arc::clone(&services));
            running.push(async move {
                // A panic fails this one job (its message stays unacknowledged,
                // so the broker redelivers it), not the route's worker.
                let outcome = std::panic::AssertUnwindSafe(pipeline::process(&ctx, &services, job))
                    .catch_unwind()
                    .await;
                if outcome.is_err() {
                    error!(route = %ctx.route.name(), "a message's processing panicked; it stays unacknowledged");
                }
                key
            });
        }
        if !open && running.is_empty() && queue.is_empty() {
            break;
        }
        tokio::select! {
            // Past the drain deadline: dropping `running` aborts the jobs, whose
            // messages stay unacknowledged.
            () = services.shutdown.deadline_passed() => break,
            job = rx.recv(), if open => match job {
                Some(job) => {
                    let key = per_topic.then(|| job.msg.topic.clone());
                    queue.push(key, job);
                }
                None => open = false,
            },
            Some(key) = running.next() => {
                if let Some(topic) = key {
                    queue.release(&topic);
                }
            }
        }
    }
    let _ = finished.send(true);
}

/// Jobs waiting to run. Keyed jobs (per-topic order) run one per key at a time,
/// in arrival order; unkeyed jobs run in arrival order with no such limit.
#[derive(Default)]
struct Queue {
    /// Per topic: jobs not yet started. A key is present while a job of that
    /// topic runs or waits.
    topics: HashMap<String, VecDeque<Job>>,
    /// Topics whose next job may start, and unkeyed jobs, in arrival order.
    ready: VecDeque<Ready>,
}

enum Ready {
    Topic(String),
    Free(Job),
}

impl Queue {
    fn push(&mut self, key: Option<String>, job: Job) {
        match key {
            None => self.ready.push_back(Ready::Free(job)),
            Some(topic) => match self.topics.get_mut(&topic) {
                Some(q) => q.push_back(job),
                None => {
                    self.topics.insert(topic.clone(), VecDeque::from([job]));
                    self.ready.push_back(Ready::Topic(topic));
                }
            },
        }
    }

    /// The next job allowed to start, with the topic it holds (if keyed).
    fn next(&mut self) -> Option<(Option<String>, Job)> {
        match self.ready.pop_front()? {
            Ready::Free(job) => Some((None, job)),
            Ready::Topic(topic) => {
                let job = self.topics.get_mut(&topic)?.pop_front()?;
                Some((Some(topic), job))
            }
        }
    }

    /// A job of `topic` finished: its next one (if any) becomes ready.
    fn release(&mut self, topic: &str) {
        match self.topics.get(topic) {
            Some(q) if q.is_empty() => {
                self.topics.remove(topic);
            }
            Some(_) => self.ready.push_back(Ready::Topic(topic.to_string())),
            None => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Completion;
    use crate::config::Config;
    use crate::gateway::Gateway;
    use crate::message::QoS;
    use crate::mqtt::outbound::PublisherTask;
    use crate::mqtt::Endpoint;
    use crate::shutdown::Shutdown;
    use bytes::Bytes;

    /// Routes from YAML flow mappings, and the services a table needs (a
    /// gateway and a publisher that are never reached).
    fn setup(routes: &[&str]) -> (Arc<Services>, Vec<Arc<RouteCtx>>) {
        let mut yaml = "mqtt: {url: \"mqtt://127.0.0.1:1\", protocol: \"5\"}\ngateway: {url: \"http://127.0.0.1:1\"}\nroutes:\n".to_string();
        for r in routes {
            yaml.push_str(&format!("  - {r}\n"));
        }
        let config = Config::parse(&yaml, "t.yaml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        let endpoint = Endpoint::publisher(&config).unwrap();
        let (_task, publisher) = PublisherTask::new(
            endpoint,
            1 << 20,
            config.mqtt.max_qos,
            16,
            config.mqtt.reconnect.clone(),
        );
        let services = Arc::new(Services {
            gateway: Gateway::new(&config.gateway, std::path::Path::new(".")).unwrap(),
            publisher,
            metrics: Metrics::new(),
            shutdown: Shutdown::new(),
            max_payload: 1 << 20,
            default_timeout: std::time::Duration::from_secs(1),
            protocol: config.mqtt.protocol,
            unrouted_dead_letter: config.unrouted_dead_letter.clone(),
            telemetry: crate::telemetry::Telemetry::off(),
        });
        let ctxs = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(RouteCtx {
                    route: r.clone(),
                    transform: None,
                    plugin_digest: None,
                    metrics: Arc::default(),
                })
            })
            .collect();
        (services, ctxs)
    }

    #[tokio::test]
    async fn each_session_subscribes_its_routes_filters_once_with_stable_ids() {
        let (services, ctxs) = setup(&[
            r#"{name: a, topic: "s/+", function: f}"#,
            r#"{name: b, topic: "s/+", function: f, session: g, qos: 0}"#,
            r#"{name: c, topic: "t/#", function: f, session: g, qos: 0}"#,
            r#"{name: d, topic: "s/+", function: f, session: g}"#,
        ]);
        let mut builder = TableBuilder::new(services, Protocol::V5);
        let start = |c: &Arc<RouteCtx>| Plan::Start {
            ctx: Arc::clone(c),
            after: None,
        };
        let table = builder.build(ctxs.iter().map(start).collect());
        let sub = |f: &str, qos, id| Subscription {
            filter: f.into(),
            qos,
            id,
        };
        assert_eq!(table.sessions["a"], vec![sub("s/+", QoS::AtLeastOnce, 1)]);
        assert_eq!(
            table.sessions["g"],
            vec![
                sub("s/+", QoS::AtLeastOnce, 1), // b (QoS 0) and d (QoS 1): the higher
                sub("t/#", QoS::AtMostOnce, 2),
            ]
        );
        // A later version keeps the identifiers of filters it still has.
        let again = builder.build(ctxs[2..].iter().map(start).collect());
        assert!(again.sessions["g"].contains(&sub("t/#", QoS::AtMostOnce, 2)));
        assert!(again.sessions["g"].contains(&sub("s/+", QoS::AtLeastOnce, 1)));
        assert!(!again.sessions.contains_key("a"));
    }

    #[tokio::test]
    async fn a_message_goes_to_its_sessions_routes_or_to_the_unrouted_dead_letter() {
        let (services, ctxs) = setup(&[
            r#"{name: a, topic: "s/+", function: f}"#,
            r#"{name: b, topic: "s/+", function: f, session: g}"#,
            r#"{name: c, topic: "s/x", function: f, session: g, retained: skip}"#,
        ]);
        let metrics = Arc::clone(&services.metrics);
        let mut builder = TableBuilder::new(Arc::clone(&services), Protocol::V311);
        let plans = ctxs
            .iter()
            .map(|c| Plan::Start {
                ctx: Arc::clone(c),
                after: None,
            })
            .collect();
        let router = Router::new(builder.build(plans), services);
        let (done, _rx) = mpsc::unbounded_channel();
        let never = |_: &str| false;
        let send = |topic: &str, retain: bool, session: &str| {
            let mut msg = Message::new(topic, Bytes::from_static(b"x"), QoS::AtLeastOnce);
            msg.retain = retain;
            let delivery = Delivery {
                session,
                subscription_ids: &[],
                subscribed_before: &never,
            };
            router.dispatch(msg, &delivery, &Completion::new(None, done.clone(), None))
        };
        assert_eq!(send("s/x", false, "g"), Ok(2), "b and c, not a");
        assert_eq!(send("s/x", false, "a"), Ok(1));
        assert_eq!(send("s/x", true, "g"), Ok(1), "c skips retained messages");
        assert_eq!(metrics.totals(), (0, 0));
        assert_eq!(send("other", false, "g"), Ok(1), "the unrouted worker");
        assert!(metrics.render().contains("fxbridge_unrouted_total 1\n"));
        router.close(builder.build(Vec::new()));
        assert_eq!(
            send("s/x", false, "g"),
            Err(Closed),
            "closed: nothing routed"
        );
    }

    fn job(topic: &str, n: u8) -> Job {
        let (tx, _rx) = mpsc::unbounded_channel();
        let c = Completion::new(None, tx, None);
        Job {
            msg: Arc::new(Message::new(topic, Bytes::from(vec![n]), QoS::AtLeastOnce)),
            captures: vec![],
            done: c.route(),
            dispatched: Instant::now(),
            guarded: Arc::default(),
        }
    }

    fn payload(j: &Job) -> u8 {
        j.msg.payload[0]
    }

    #[test]
    fn one_job_per_topic_runs_at_a_time_in_arrival_order() {
        let mut q = Queue::default();
        q.push(Some("a".into()), job("a", 1));
        q.push(Some("a".into()), job("a", 2));
        q.push(Some("b".into()), job("b", 3));
        let (k1, j1) = q.next().unwrap();
        let (k2, j2) = q.next().unwrap();
        assert_eq!((k1.as_deref(), payload(&j1)), (Some("a"), 1));
        assert_eq!((k2.as_deref(), payload(&j2)), (Some("b"), 3));
        assert!(q.next().is_none(), "a/2 must wait for a/1");
        q.release("a");
        let (_, j3) = q.next().unwrap();
        assert_eq!(payload(&j3), 2);
        q.release("b");
        q.release("a");
        assert!(q.is_empty());
    }

    #[test]
    fn unkeyed_jobs_are_not_held_back() {
        let mut q = Queue::default();
        q.push(None, job("a", 1));
        q.push(None, job("a", 2));
        assert_eq!(payload(&q.next().unwrap().1), 1);
        assert_eq!(payload(&q.next().unwrap().1), 2);
        assert!(q.is_empty());
    }
}
