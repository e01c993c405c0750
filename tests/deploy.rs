//! `deploy/`: the Kubernetes manifests (`deploy/k8s`) and the systemd unit
//! (`deploy/systemd/fxbridge.service`), checked.
//!
//! - Every object in `deploy/k8s` has what its kind requires, and the objects
//!   agree with each other: the selectors match the pods' labels, the probes
//!   reach the admin port at `/readyz` and `/healthz`, the ServiceMonitor finds
//!   the Service and its port, every mount names a volume whose ConfigMap or
//!   Secret exists and holds the keys used, the pod runs as 65532 on a
//!   read-only root without privileges, with requests and limits.
//! - The ConfigMap's `bridge.yaml` fits the deployment: one `$share` group,
//!   no fixed client id shared by the replicas, the admin endpoint on
//!   `0.0.0.0` at the probed port, writable paths on writable volumes, and a
//!   `shutdown.drain_timeout` shorter than the grace period.
//! - The real `fxbridge check` passes on it, laid out as the pod sees it: the
//!   ConfigMaps and the Secret written to a temporary directory at their mount
//!   paths, the config's absolute paths moved there, and the container's
//!   environment (from the Secret) and nothing else.
//! - The systemd unit has its sandboxing, reload and directory settings, and
//!   `systemd-analyze verify` (when installed) finds nothing in it.
//! - Each check can fail: broken copies of the manifests and of the unit are
//!   caught, each with its message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_yaml::Value;

/// The image's user (deploy/Dockerfile).
const UID: u64 = 65532;
/// `shutdown.drain_timeout` when bridge.yaml does not set it.
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// How much longer than `shutdown.drain_timeout` a stop may take: the bridge
/// waits up to 2 s past the drain deadline, then disconnects.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// Pod name of the first replica, as the downward API would give it.
const POD_NAME: &str = "fxbridge-0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Reading the manifests.
// ---------------------------------------------------------------------------

/// One YAML document of deploy/k8s.
#[derive(Debug, Clone)]
struct Obj {
    file: String,
    doc: Value,
}

impl Obj {
    fn kind(&self) -> &str {
        str_at(&self.doc, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        str_at(&self.doc, &["metadata", "name"]).unwrap_or("")
    }
    fn id(&self) -> String {
        format!("{}: {} {:?}", self.file, self.kind(), self.name())
    }
}

/// Every document of every `.yaml` file in deploy/k8s, in file order.
fn load_manifests() -> Vec<Obj> {
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut objs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !doc.is_null() {
                objs.push(Obj {
                    file: file.clone(),
                    doc,
                });
            }
        }
    }
    objs
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn at_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| {
        v.get_mut(*k)
            .unwrap_or_else(|| panic!("no key {k:?} on the way to {path:?}"))
    })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// A mapping of strings (labels, selectors) as a map; empty when absent.
fn labels(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    at(v, path)
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = |v: &Value| match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                    };
                    (text(k), text(v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// An RFC 1123 subdomain, as object names must be.
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A ConfigMap or Secret key.
fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// A Kubernetes memory quantity in bytes (`64Mi`, `1Gi`, `500M`, `1024`).
fn memory(q: &str) -> Option<f64> {
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse().ok()
}

/// The keys and contents of a ConfigMap (`data` and `binaryData`) or a Secret
/// (`data` and `stringData`), decoded.
fn contents(o: &Obj) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    let (plain, encoded) = match o.kind() {
        "ConfigMap" => ("data", "binaryData"),
        "Secret" => ("stringData", "data"),
        k => return Err(format!("{k} has no contents")),
    };
    for (section, base64) in [(plain, false), (encoded, true)] {
        for (k, v) in at(&o.doc, &[section])
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let k = k
                .as_str()
                .ok_or(format!("{}: a key of {section} is not a string", o.id()))?;
            let v = v
                .as_str()
                .ok_or(format!("{}: {section}.{k} is not a string", o.id()))?;
            let bytes = if base64 {
                b64.decode(v)
                    .map_err(|e| format!("{}: {section}.{k} is not base64: {e}", o.id()))?
            } else {
                v.as_bytes().to_vec()
            };
            if out.insert(k.to_string(), bytes).is_some() {
                return Err(format!("{}: key {k:?} is given twice", o.id()));
            }
        }
    }
    Ok(out)
}

fn find<'a>(objs: &'a [Obj], kind: &str, name: &str) -> Option<&'a Obj> {
    objs.iter().find(|o| o.kind() == kind && o.name() == name)
}

// ---------------------------------------------------------------------------
// The pod as the workload describes it.
// ---------------------------------------------------------------------------

/// What a volume mount of the fxbridge container is backed by.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    ConfigMap(String),
    Secret(String),
    EmptyDir,
    Other,
}

#[derive(Debug, Clone)]
struct Mount {
    path: String,
    source: Source,
    read_only: bool,
    sub_path: bool,
    volume: String,
}

/// The fxbridge container of the workload and what it sees.
struct Pod<'a> {
    workload: &'a Obj,
    container: &'a Value,
    mounts: Vec<Mount>,
    /// containerPort by name.
    ports: BTreeMap<String, u64>,
    /// The config file the container runs with (`-c PATH`).
    config_path: Option<String>,
}

impl Pod<'_> {
    /// The mount `path` is in (the longest mount path that contains it), and
    /// the rest of the path below it.
    fn mount_of(&self, path: &str) -> Option<(&Mount, String)> {
        self.mounts
            .iter()
            .filter_map(|m| {
                let mp = m.path.trim_end_matches('/');
                let rest = path.strip_prefix(mp)?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| (m, rest.trim_start_matches('/').to_string()))
            })
            .max_by_key(|(m, _)| m.path.len())
    }

    fn replicas(&self) -> u64 {
        at(&self.workload.doc, &["spec", "replicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        labels(
            &self.workload.doc,
            &["spec", "template", "metadata", "labels"],
        )
    }

    /// A probe's or Service's port (a name or a number) as a number, if the
    /// container has it.
    fn port(&self, port: &Value) -> Option<u64> {
        match port {
            Value::String(name) => self.ports.get(name).copied(),
            Value::Number(n) => n.as_u64().filter(|n| self.ports.values().any(|p| p == n)),
            _ => None,
        }
    }
}

fn pod(workload: &Obj) -> Result<Pod<'_>, String> {
    let spec = at(&workload.doc, &["spec", "template", "spec"])
        .ok_or(format!("{}: no spec.template.spec", workload.id()))?;
    let container = seq(spec, &["containers"])
        .iter()
        .find(|c| str_at(c, &["name"]) == Some("fxbridge"))
        .ok_or(format!("{}: no container named fxbridge", workload.id()))?;
    let volumes: BTreeMap<&str, &Value> = seq(spec, &["volumes"])
        .iter()
        .filter_map(|v| Some((str_at(v, &["name"])?, v)))
        .collect();
    let mut mounts = Vec::new();
    for m in seq(container, &["volumeMounts"]) {
        let volume = str_at(m, &["name"]).unwrap_or("").to_string();
        let v = volumes.get(volume.as_str()).ok_or(format!(
            "{}: volumeMount {volume:?} names no volume",
            workload.id()
        ))?;
        let source = if let Some(n) = str_at(v, &["configMap", "name"]) {
            Source::ConfigMap(n.to_string())
        } else if let Some(n) = str_at(v, &["secret", "secretName"]) {
            Source::Secret(n.to_string())
        } else if at(v, &["emptyDir"]).is_some() {
            Source::EmptyDir
        } else {
            Source::Other
        };
        mounts.push(Mount {
            path: str_at(m, &["mountPath"]).unwrap_or("").to_string(),
            source,
            read_only: at(m, &["readOnly"]).and_then(Value::as_bool) == Some(true),
            sub_path: at(m, &["subPath"]).is_some() || at(m, &["subPathExpr"]).is_some(),
            volume,
        });
    }
    let ports = seq(container, &["ports"])
        .iter()
        .filter_map(|p| {
            Some((
                str_at(p, &["name"])?.to_string(),
                at(p, &["containerPort"])?.as_u64()?,
            ))
        })
        .collect();
    let argv: Vec<&str> = seq(container, &["command"])
        .iter()
        .chain(seq(container, &["args"]))
        .filter_map(Value::as_str)
        .collect();
    let config_path = argv
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config")
        .map(|w| w[1].to_string());
    Ok(Pod {
        workload,
        container,
        mounts,
        ports,
        config_path,
    })
}

/// The bridge.yaml the container runs with: the ConfigMap key its `-c` path
/// is mounted from.
fn bridge_yaml(objs: &[Obj], pod: &Pod<'_>) -> Result<String, String> {
    let path = pod
        .config_path
        .as_deref()
        .ok_or("the container's command has no `-c <bridge.yaml>`")?;
    let (mount, key) = pod
        .mount_of(path)
        .ok_or(format!("the config file {path} is on no volume mount"))?;
    let Source::ConfigMap(name) = &mount.source else {
        return Err(format!("the config file {path} is not from a ConfigMap"));
    };
    let cm = find(objs, "ConfigMap", name).ok_or(format!("no ConfigMap {name:?}"))?;
    let data = contents(cm)?;
    let text = data.get(&key).ok_or(format!(
        "ConfigMap {name:?} has no key {key:?} (for {path})"
    ))?;
    String::from_utf8(text.clone()).map_err(|e| e.to_string())
}

fn duration(v: Option<&Value>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(Value::String(s)) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}")),
        Some(other) => Err(format!("not a duration: {other:?}")),
    }
}

// ---------------------------------------------------------------------------
// The checks of the manifests. Each returns what is wrong, as sentences.
// ---------------------------------------------------------------------------

fn problems(objs: &[Obj]) -> Vec<String> {
    let mut p = Vec::new();
    let mut seen = BTreeSet::new();
    for o in objs {
        let api = match o.kind() {
            "ConfigMap" | "Secret" | "Service" => "v1",
            "StatefulSet" | "Deployment" => "apps/v1",
            "PodDisruptionBudget" => "policy/v1",
            "ServiceMonitor" => "monitoring.coreos.com/v1",
            "Kustomization" => "kustomize.config.k8s.io/v1beta1",
            "" => {
                p.push(format!("{}: a document without `kind`", o.file));
                continue;
            }
            other => {
                p.push(format!("{}: unexpected kind {other}", o.id()));
                continue;
            }
        };
        if str_at(&o.doc, &["apiVersion"]) != Some(api) {
            p.push(format!("{}: apiVersion must be {api}", o.id()));
        }
        if o.kind() == "Kustomization" {
            continue;
        }
        if !dns_name(o.name()) {
            p.push(format!(
                "{}: metadata.name must be a lower-case DNS name",
                o.id()
            ));
        }
        if !seen.insert((o.kind().to_string(), o.name().to_string())) {
            p.push(format!("{}: defined twice", o.id()));
        }
        if labels(&o.doc, &["metadata", "labels"])
            .get("app.kubernetes.io/name")
            .map(String::as_str)
            != Some("fxbridge")
        {
            p.push(format!(
                "{}: metadata.labels needs app.kubernetes.io/name: fxbridge",
                o.id()
            ));
        }
        match o.kind() {
            "ConfigMap" | "Secret" => check_contents(o, &mut p),
            _ => {}
        }
    }
    check_kustomization(objs, &mut p);

    let workloads: Vec<&Obj> = objs
        .iter()
        .filter(|o| matches!(o.kind(), "StatefulSet" | "Deployment"))
        .collect();
    let [workload] = workloads.as_slice() else {
        p.push(format!(
            "expected one workload (StatefulSet), found {}",
            workloads.len()
        ));
        return p;
    };
    if workload.kind() != "StatefulSet" {
        p.push(format!(
            "{}: must be a StatefulSet: the client id is fxbridge-<pod name>, and only a StatefulSet's pods keep their names, so that a replaced replica finds its persistent session",
            workload.id()
        ));
    }
    let pod = match pod(workload) {
        Ok(pod) => pod,
        Err(e) => {
            p.push(e);
            return p;
        }
    };
    check_workload(objs, &pod, &mut p);
    match bridge_yaml(objs, &pod) {
        Ok(text) => match serde_yaml::from_str::<Value>(&text) {
            Ok(cfg) => check_bridge_yaml(objs, &pod, &cfg, &mut p),
            Err(e) => p.push(format!("bridge.yaml is not YAML: {e}")),
        },
        Err(e) => p.push(format!("{}: {e}", workload.id())),
    }
    check_service_and_monitor(objs, &pod, &mut p);
    check_pdb(objs, &pod, &mut p);
    p
}

fn check_contents(o: &Obj, p: &mut Vec<String>) {
    if o.kind() == "Secret" && str_at(&o.doc, &["type"]).is_none() {
        p.push(format!("{}: no type (Opaque)", o.id()));
    }
    let data = match contents(o) {
        Ok(d) => d,
        Err(e) => {
            p.push(e);
            return;
        }
    };
    if data.is_empty() {
        p.push(format!("{}: holds nothing", o.id()));
    }
    for (k, bytes) in &data {
        if !valid_key(k) {
            p.push(format!("{}: {k:?} is not a valid key", o.id()));
        }
        if k.ends_with(".wasm") {
            if !bytes.starts_with(b"\0asm") {
                p.push(format!("{}: {k} is not WebAssembly", o.id()));
            }
            // A component built in this repository must be the same bytes,
            // or the manifest is stale.
            let built = root().join("plugins/prebuilt").join(k);
            if let Ok(want) = std::fs::read(&built) {
                if &want != bytes {
                    p.push(format!(
                        "{}: {k} differs from {}: run bash deploy/k8s/plugins.sh",
                        o.id(),
                        built.display()
                    ));
                }
            }
        }
    }
}

fn check_kustomization(objs: &[Obj], p: &mut Vec<String>) {
    let Some(k) = objs.iter().find(|o| o.kind() == "Kustomization") else {
        p.push("no kustomization.yaml".into());
        return;
    };
    let listed: BTreeSet<&str> = seq(&k.doc, &["resources"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for r in &listed {
        if !root().join("deploy/k8s").join(r).is_file() {
            p.push(format!("{}: resource {r} does not exist", k.file));
        }
    }
    let files: BTreeSet<&str> = objs
        .iter()
        .filter(|o| o.kind() != "Kustomization")
        .map(|o| o.file.as_str())
        .collect();
    for f in files.difference(&listed) {
        p.push(format!("{}: does not list {f}", k.file));
    }
}

fn check_workload(objs: &[Obj], pod: &Pod<'_>, p: &mut Vec<String>) {
    let w = pod.workload;
    let id = w.id();
    let spec = at(&w.doc, &["spec", "template", "spec"]).unwrap();
    let c = pod.container;

    let selector = labels(&w.doc, &["spec", "selector", "matchLabels"]);
    if selector.is_empty() || !subset(&selector, &pod.labels()) {
        p.push(format!(
            "{id}: spec.selector.matchLabels {selector:?} does not match the pod template's labels {:?}",
            pod.labels()
        ));
    }
    if pod.replicas() < 2 {
        p.push(format!(
            "{id}: replicas {} (the group needs at least 2)",
            pod.replicas()
        ));
    }
    if w.kind() == "StatefulSet" {
        let governing = str_at(&w.doc, &["spec", "serviceName"]).unwrap_or("");
        match find(objs, "Service", governing) {
            Some(s) if str_at(&s.doc, &["spec", "clusterIP"]) == Some("None") => {}
            _ => p.push(format!(
                "{id}: spec.serviceName {governing:?} must name a headless Service here"
            )),
        }
    }

    // Who the process runs as, and what it may do.
    let pod_sc = at(spec, &["securityContext"]);
    let c_sc = at(c, &["securityContext"]);
    let either = |path: &[&str]| {
        c_sc.and_then(|s| at(s, path))
            .or_else(|| pod_sc.and_then(|s| at(s, path)))
    };
    if either(&["runAsNonRoot"]).and_then(Value::as_bool) != Some(true) {
        p.push(format!("{id}: securityContext.runAsNonRoot must be true"));
    }
    if either(&["runAsUser"]).and_then(Value::as_u64) != Some(UID) {
        p.push(format!("{id}: securityContext.runAsUser must be {UID}"));
    }
    if either(&["seccompProfile", "type"]).and_then(Value::as_str) != Some("RuntimeDefault") {
        p.push(format!("{id}: seccompProfile.type must be RuntimeDefault"));
    }
    let c_bool = |k: &str| c_sc.and_then(|s| at(s, &[k])).and_then(Value::as_bool);
    if c_bool("allowPrivilegeEscalation") != Some(false) {
        p.push(format!(
            "{id}: container securityContext.allowPrivilegeEscalation must be false"
        ));
    }
    if c_bool("readOnlyRootFilesystem") != Some(true) {
        p.push(format!(
            "{id}: container securityContext.readOnlyRootFilesystem must be true"
        ));
    }
    if c_bool("privileged") == Some(true) {
        p.push(format!("{id}: the container must not be privileged"));
    }
    let drops: Vec<&str> = c_sc
        .map(|s| seq(s, &["capabilities", "drop"]))
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if !drops.contains(&"ALL") {
        p.push(format!("{id}: capabilities.drop must contain ALL"));
    }
    if c_sc.and_then(|s| at(s, &["capabilities", "add"])).is_some() {
        p.push(format!("{id}: capabilities.add must be empty"));
    }
    if at(spec, &["automountServiceAccountToken"]).and_then(Value::as_bool) != Some(false) {
        p.push(format!(
            "{id}: automountServiceAccountToken must be false (fxbridge does not use the API)"
        ));
    }

    // The image.
    let image = str_at(c, &["image"]).unwrap_or("");
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    if image.is_empty() || tag.is_empty() || tag.contains('/') || tag == "latest" {
        p.push(format!(
            "{id}: image {image:?} must name a version (not latest)"
        ));
    }

    // deploy/Dockerfile, when there: the image's user is the pod's, and an
    // ENTRYPOINT takes the args when the container gives no command.
    if let Ok(docker) = std::fs::read_to_string(root().join("deploy/Dockerfile")) {
        let lines: Vec<&str> = docker.lines().map(str::trim).collect();
        let from = lines
            .iter()
            .rposition(|l| l.starts_with("FROM "))
            .unwrap_or(0);
        let last = &lines[from..];
        let user = last.iter().rev().find_map(|l| l.strip_prefix("USER "));
        if let Some(uid) = user.and_then(|u| u.split(':').next()?.trim().parse::<u64>().ok()) {
            if uid != UID {
                p.push(format!(
                    "deploy/Dockerfile: USER {uid}, the pod runs as {UID}"
                ));
            }
        }
        if at(c, &["command"]).is_none() && !last.iter().any(|l| l.starts_with("ENTRYPOINT ")) {
            p.push(format!(
                "{id}: no command, and deploy/Dockerfile's image has no ENTRYPOINT"
            ));
        }
    }

    // Resources.
    for path in [
        ["requests", "cpu"],
        ["requests", "memory"],
        ["limits", "memory"],
    ] {
        if at(c, &["resources", path[0], path[1]]).is_none() {
            p.push(format!(
                "{id}: resources.{}.{} is not set",
                path[0], path[1]
            ));
        }
    }
    let mem = |k: &str| {
        at(c, &["resources", k, "memory"]).and_then(|v| match v {
            Value::String(s) => memory(s),
            Value::Number(n) => n.as_f64(),
            _ => None,
        })
    };
    if let (Some(req), Some(lim)) = (mem("requests"), mem("limits")) {
        if req > lim {
            p.push(format!(
                "{id}: resources.requests.memory is above resources.limits.memory"
            ));
        }
    }

    // Probes: on the admin port, at the right paths.
    for (probe, path, required) in [
        ("readinessProbe", "/readyz", true),
        ("livenessProbe", "/healthz", true),
        ("startupProbe", "/healthz", false),
    ] {
        let Some(pr) = at(c, &[probe]) else {
            if required {
                p.push(format!("{id}: no {probe}"));
            }
            continue;
        };
        if str_at(pr, &["httpGet", "path"]) != Some(path) {
            p.push(format!("{id}: {probe} must be an httpGet of {path}"));
        }
        let port = at(pr, &["httpGet", "port"]).cloned().unwrap_or(Value::Null);
        match pod.port(&port) {
            Some(n) if Some(n) == pod.ports.get("admin").copied() => {}
            _ => p.push(format!(
                "{id}: {probe}'s port {port:?} is not the container's `admin` port"
            )),
        }
    }

    // Volumes: whole directories (hot reload), from objects that exist.
    for m in &pod.mounts {
        match &m.source {
            Source::ConfigMap(n) | Source::Secret(n) => {
                let kind = if matches!(m.source, Source::ConfigMap(_)) {
                    "ConfigMap"
                } else {
                    "Secret"
                };
                if find(objs, kind, n).is_none() {
                    p.push(format!(
                        "{id}: volume {:?} names {kind} {n:?}, which is not here",
                        m.volume
                    ));
                }
                if m.sub_path {
                    p.push(format!(
                        "{id}: volumeMount {:?} uses subPath: it would never see a change, and hot reload depends on it",
                        m.volume
                    ));
                }
                if !m.read_only {
                    p.push(format!(
                        "{id}: volumeMount {:?} should be readOnly",
                        m.volume
                    ));
                }
            }
            Source::EmptyDir | Source::Other => {}
        }
    }

    // Environment variables from Secrets and ConfigMaps that have the key.
    for e in seq(c, &["env"]) {
        let name = str_at(e, &["name"]).unwrap_or("?");
        for (kind, field) in [("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")] {
            if let Some(r) = at(e, &["valueFrom", field]) {
                let (n, k) = (
                    str_at(r, &["name"]).unwrap_or(""),
                    str_at(r, &["key"]).unwrap_or(""),
                );
                let has = find(objs, kind, n)
                    .and_then(|o| contents(o).ok())
                    .is_some_and(|d| d.contains_key(k));
                if !has {
                    p.push(format!("{id}: env {name} needs key {k:?} of {kind} {n:?}"));
                }
            }
        }
    }
}

/// The `{env: X}` and `{file: P}` secrets anywhere in the config, with their
/// setting's path.
fn secrets(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) => {
            let keys: Vec<&str> = m.keys().filter_map(Value::as_str).collect();
            if keys == ["env"] || keys == ["file"] {
                out.push((path, v.clone()));
                return;
            }
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                secrets(v, p, out);
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                secrets(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_bridge_yaml(objs: &[Obj], pod: &Pod<'_>, cfg: &Value, p: &mut Vec<String>) {
    let id = pod.workload.id();

    // The client id: with one file for all replicas, a fixed one would be
    // shared, and the replicas would take each other's connection.
    if pod.replicas() > 1 && at(cfg, &["mqtt", "client_id"]).is_some() {
        p.push(format!(
            "bridge.yaml: mqtt.client_id must not be set: {} replicas would share it; the default, fxbridge-<hostname>, is per pod",
            pod.replicas()
        ));
    }
    if at(cfg, &["mqtt", "persistent_session"]).and_then(Value::as_bool) == Some(false) {
        p.push("bridge.yaml: mqtt.persistent_session must stay on".into());
    }
    if pod.replicas() > 1
        && at(cfg, &["mqtt", "leave_shared_on_stop"]).and_then(Value::as_bool) == Some(false)
    {
        p.push(
            "bridge.yaml: mqtt.leave_shared_on_stop must stay on: a replica removed by a scale-down would keep being dealt shares".into(),
        );
    }

    // One shared-subscription group for every route.
    let mut groups = BTreeSet::new();
    let routes = seq(cfg, &["routes"]);
    if routes.is_empty() {
        p.push("bridge.yaml: no routes".into());
    }
    for (i, r) in routes.iter().enumerate() {
        let topic = str_at(r, &["topic"]).unwrap_or("");
        match topic
            .strip_prefix("$share/")
            .and_then(|t| t.split_once('/'))
        {
            Some((group, _)) => {
                groups.insert(group.to_string());
            }
            None => p.push(format!(
                "bridge.yaml: routes[{i}].topic {topic:?} must be a $share/<group>/... filter, or each replica invokes the function for every message"
            )),
        }
    }
    if groups.len() > 1 {
        p.push(format!(
            "bridge.yaml: the routes use several $share groups {groups:?}; use one"
        ));
    }

    // The admin endpoint: reachable from the kubelet, on the probed port.
    match str_at(cfg, &["admin", "listen"]).map(str::parse::<std::net::SocketAddr>) {
        Some(Ok(addr)) => {
            if !addr.ip().is_unspecified() {
                p.push(format!(
                    "bridge.yaml: admin.listen {addr} must be 0.0.0.0 (or [::]) for the probes"
                ));
            }
            if pod.ports.get("admin").copied() != Some(u64::from(addr.port())) {
                p.push(format!(
                    "{id}: the container port `admin` must be admin.listen's port {}",
                    addr.port()
                ));
            }
        }
        _ => p.push("bridge.yaml: admin.listen must be set (0.0.0.0:9090)".into()),
    }

    // Grace period longer than the drain.
    match duration(at(cfg, &["shutdown", "drain_timeout"]), DEFAULT_DRAIN) {
        Ok(drain) => {
            let grace = at(
                &pod.workload.doc,
                &["spec", "template", "spec", "terminationGracePeriodSeconds"],
            )
            .and_then(Value::as_u64)
            .unwrap_or(30);
            if Duration::from_secs(grace) < drain + STOP_MARGIN {
                p.push(format!(
                    "{id}: terminationGracePeriodSeconds {grace} must be at least {STOP_MARGIN:?} longer than shutdown.drain_timeout {drain:?}"
                ));
            }
        }
        Err(e) => p.push(format!("bridge.yaml: shutdown.drain_timeout: {e}")),
    }

    // Where it writes: the root is read-only, so on a writable volume.
    for (setting, path) in [
        ("plugins.cache_dir", str_at(cfg, &["plugins", "cache_dir"])),
        ("state_dir", str_at(cfg, &["state_dir"])),
    ] {
        let Some(path) = path else {
            p.push(format!(
                "bridge.yaml: {setting} must be set: its default is under $HOME, on the read-only root"
            ));
            continue;
        };
        match pod.mount_of(path) {
            Some((m, _)) if m.source == Source::EmptyDir && !m.read_only => {}
            _ => p.push(format!(
                "bridge.yaml: {setting} {path} must be on a writable emptyDir volume (the root file system is read-only)"
            )),
        }
    }

    // What it reads: the plugins and the secrets, at keys that exist.
    let key_at = |setting: &str, path: &str, want: &[&str], p: &mut Vec<String>| {
        let config_dir = pod
            .config_path
            .as_deref()
            .and_then(|c| Path::new(c).parent())
            .unwrap_or(Path::new("/"));
        let full = config_dir.join(path).to_string_lossy().into_owned();
        let found = pod.mount_of(&full).and_then(|(m, key)| match &m.source {
            Source::ConfigMap(n) if want.contains(&"ConfigMap") => Some(("ConfigMap", n, key)),
            Source::Secret(n) if want.contains(&"Secret") => Some(("Secret", n, key)),
            _ => None,
        });
        match found {
            Some((kind, name, key)) => {
                let has = find(objs, kind, name)
                    .and_then(|o| contents(o).ok())
                    .is_some_and(|d| d.contains_key(&key));
                if !has {
                    p.push(format!(
                        "bridge.yaml: {setting} {full} needs key {key:?} in {kind} {name:?}"
                    ));
                }
            }
            None => p.push(format!(
                "bridge.yaml: {setting} {full} is on no {} volume",
                want.join(" or ")
            )),
        }
    };
    for (i, r) in routes.iter().enumerate() {
        if let Some(c) = str_at(r, &["transform", "component"]) {
            key_at(
                &format!("routes[{i}].transform.component"),
                c,
                &["ConfigMap"],
                p,
            );
        }
    }
    let mut found = Vec::new();
    secrets(cfg, String::new(), &mut found);
    let env: BTreeSet<&str> = seq(pod.container, &["env"])
        .iter()
        .filter_map(|e| str_at(e, &["name"]))
        .collect();
    for (setting, s) in &found {
        if let Some(f) = str_at(s, &["file"]) {
            key_at(setting, f, &["Secret", "ConfigMap"], p);
        }
        if let Some(var) = str_at(s, &["env"]) {
            if !env.contains(var) {
                p.push(format!(
                    "bridge.yaml: {setting} reads ${var}, which the container's env does not set"
                ));
            }
        }
    }
}

fn check_service_and_monitor(objs: &[Obj], pod: &Pod<'_>, p: &mut Vec<String>) {
    let services: Vec<&Obj> = objs.iter().filter(|o| o.kind() == "Service").collect();
    for s in &services {
        let sel = labels(&s.doc, &["spec", "selector"]);
        if sel.is_empty() || !subset(&sel, &pod.labels()) {
            p.push(format!(
                "{}: spec.selector {sel:?} does not select the fxbridge pods {:?}",
                s.id(),
                pod.labels()
            ));
        }
        let ports = seq(&s.doc, &["spec", "ports"]);
        if ports.is_empty() {
            p.push(format!("{}: no ports", s.id()));
        }
        for port in ports {
            if str_at(port, &["name"]).is_none() {
                p.push(format!("{}: every port needs a name", s.id()));
            }
            let target = at(port, &["targetPort"])
                .or_else(|| at(port, &["port"]))
                .cloned()
                .unwrap_or(Value::Null);
            if pod.port(&target).is_none() {
                p.push(format!(
                    "{}: targetPort {target:?} is no port of the fxbridge container",
                    s.id()
                ));
            }
        }
    }
    let monitors: Vec<&Obj> = objs
        .iter()
        .filter(|o| o.kind() == "ServiceMonitor")
        .collect();
    if monitors.is_empty() {
        p.push("no ServiceMonitor".into());
    }
    let token_file = bridge_yaml(objs, pod)
        .ok()
        .and_then(|t| serde_yaml::from_str::<Value>(&t).ok())
        .and_then(|c| str_at(&c, &["admin", "token", "file"]).map(str::to_string));
    for m in monitors {
        let sel = labels(&m.doc, &["spec", "selector", "matchLabels"]);
        let selected: Vec<&&Obj> = services
            .iter()
            .filter(|s| !sel.is_empty() && subset(&sel, &labels(&s.doc, &["metadata", "labels"])))
            .collect();
        if selected.is_empty() {
            p.push(format!(
                "{}: spec.selector.matchLabels {sel:?} selects no Service here",
                m.id()
            ));
        }
        let endpoints = seq(&m.doc, &["spec", "endpoints"]);
        if endpoints.is_empty() {
            p.push(format!("{}: no endpoints", m.id()));
        }
        for e in endpoints {
            let port = str_at(e, &["port"]).unwrap_or("");
            let named = selected.iter().any(|s| {
                seq(&s.doc, &["spec", "ports"])
                    .iter()
                    .any(|sp| str_at(sp, &["name"]) == Some(port))
            });
            if !named {
                p.push(format!(
                    "{}: endpoint port {port:?} is not a port name of the selected Service",
                    m.id()
                ));
            }
            if str_at(e, &["path"]).unwrap_or("/metrics") != "/metrics" {
                p.push(format!("{}: endpoint path must be /metrics", m.id()));
            }
            // /metrics needs admin.token: the monitor must send the same
            // Secret key the bridge reads its token from.
            if let Some(file) = &token_file {
                let cred = at(e, &["authorization", "credentials"])
                    .or_else(|| at(e, &["bearerTokenSecret"]));
                let (n, k) = (
                    cred.and_then(|c| str_at(c, &["name"])).unwrap_or(""),
                    cred.and_then(|c| str_at(c, &["key"])).unwrap_or(""),
                );
                let same = pod.mount_of(file).is_some_and(|(mt, key)| {
                    mt.source == Source::Secret(n.to_string()) && key == k
                });
                if !same {
                    p.push(format!(
                        "{}: endpoint {port:?} must authorize with the Secret key admin.token reads ({file}), not {n:?}/{k:?}",
                        m.id()
                    ));
                }
            }
        }
    }
}

fn check_pdb(objs: &[Obj], pod: &Pod<'_>, p: &mut Vec<String>) {
    let pdbs: Vec<&Obj> = objs
        .iter()
        .filter(|o| o.kind() == "PodDisruptionBudget")
        .collect();
    if pdbs.is_empty() {
        p.push("no PodDisruptionBudget".into());
    }
    for b in pdbs {
        let sel = labels(&b.doc, &["spec", "selector", "matchLabels"]);
        if sel.is_empty() || !subset(&sel, &pod.labels()) {
            p.push(format!(
                "{}: spec.selector.matchLabels {sel:?} does not select the fxbridge pods",
                b.id()
            ));
        }
        let min = at(&b.doc, &["spec", "minAvailable"]);
        let max = at(&b.doc, &["spec", "maxUnavailable"]);
        match (min, max) {
            (Some(_), Some(_)) | (None, None) => p.push(format!(
                "{}: exactly one of minAvailable and maxUnavailable",
                b.id()
            )),
            (None, Some(Value::Number(n))) => {
                let n = n.as_u64().unwrap_or(0);
                if n == 0 || n >= pod.replicas() {
                    p.push(format!(
                        "{}: maxUnavailable {n} must be between 1 and replicas - 1",
                        b.id()
                    ));
                }
            }
            (Some(Value::Number(n)), None) => {
                let n = n.as_u64().unwrap_or(0);
                if n == 0 || n >= pod.replicas() {
                    p.push(format!(
                        "{}: minAvailable {n} must be between 1 and replicas - 1",
                        b.id()
                    ));
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// `fxbridge check` on the ConfigMap's bridge.yaml, laid out as in the pod.
// ---------------------------------------------------------------------------

/// Moves every absolute path in the config below `dir`.
fn rebase(v: &mut Value, dir: &Path) {
    match v {
        Value::String(s) if s.starts_with('/') => {
            *s = dir.join(&s[1..]).to_string_lossy().into_owned();
        }
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| rebase(v, dir)),
        Value::Sequence(s) => s.iter_mut().for_each(|v| rebase(v, dir)),
        _ => {}
    }
}

/// Writes the pod's volumes under `dir` at their mount paths, and bridge.yaml
/// (its absolute paths moved under `dir`) at its own; returns its path and the
/// container's environment.
fn lay_out(objs: &[Obj], dir: &Path) -> Result<(PathBuf, Vec<(String, String)>), String> {
    let workload = objs
        .iter()
        .find(|o| matches!(o.kind(), "StatefulSet" | "Deployment"))
        .ok_or("no workload")?;
    let pod = pod(workload)?;
    for m in &pod.mounts {
        let target = dir.join(m.path.trim_start_matches('/'));
        std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        let data = match &m.source {
            Source::ConfigMap(n) => {
                contents(find(objs, "ConfigMap", n).ok_or(format!("no ConfigMap {n}"))?)?
            }
            Source::Secret(n) => {
                contents(find(objs, "Secret", n).ok_or(format!("no Secret {n}"))?)?
            }
            Source::EmptyDir | Source::Other => BTreeMap::new(),
        };
        for (k, bytes) in data {
            std::fs::write(target.join(k), bytes).map_err(|e| e.to_string())?;
        }
    }
    let mut cfg: Value =
        serde_yaml::from_str(&bridge_yaml(objs, &pod)?).map_err(|e| e.to_string())?;
    rebase(&mut cfg, dir);
    let config = dir.join(
        pod.config_path
            .as_deref()
            .ok_or("no -c")?
            .trim_start_matches('/'),
    );
    std::fs::create_dir_all(config.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(&config, serde_yaml::to_string(&cfg).unwrap()).map_err(|e| e.to_string())?;

    let mut env = Vec::new();
    for e in seq(pod.container, &["env"]) {
        let name = str_at(e, &["name"]).unwrap_or("").to_string();
        let value = if let Some(v) = str_at(e, &["value"]) {
            v.to_string()
        } else if let Some(r) = at(e, &["valueFrom", "secretKeyRef"]) {
            let n = str_at(r, &["name"]).unwrap_or("");
            let k = str_at(r, &["key"]).unwrap_or("");
            let data = contents(find(objs, "Secret", n).ok_or(format!("no Secret {n}"))?)?;
            String::from_utf8(data.get(k).ok_or(format!("no key {k} in {n}"))?.clone())
                .map_err(|e| e.to_string())?
        } else if str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("metadata.name") {
            POD_NAME.to_string()
        } else {
            return Err(format!("env {name}: a source this test does not model"));
        };
        env.push((name, value));
    }
    Ok((config, env))
}

/// Runs the built `fxbridge check` as the pod would run `fxbridge run`:
/// `Ok(output)` when it passes.
fn fxbridge_check(objs: &[Obj]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let (config, env) = lay_out(objs, dir.path())?;
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .arg("check")
        .arg("-c")
        .arg(&config)
        .env_clear()
        .env("HOME", dir.path())
        .env("RUST_LOG", "warn")
        .envs(env)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

// ---------------------------------------------------------------------------
// The systemd unit.
// ---------------------------------------------------------------------------

const UNIT: &str = "deploy/systemd/fxbridge.service";

/// `(section, key)` → values, in order (keys such as ExecReload repeat).
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry((section.clone(), k.trim().to_string()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

fn unit_problems(text: &str) -> Vec<String> {
    let unit = parse_unit(text);
    let get = |k: &str| unit.get(&("Service".to_string(), k.to_string()));
    let last = |k: &str| get(k).and_then(|v| v.last()).map(String::as_str);
    let mut p = Vec::new();
    let exact = [
        // fxbridge does not call sd_notify: `notify` would time out.
        ("Type", "simple"),
        (
            "ExecStart",
            "/usr/local/bin/fxbridge run -c /etc/fxbridge/bridge.yaml",
        ),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "fxbridge"),
        ("CacheDirectory", "fxbridge"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
    ];
    for (k, want) in exact {
        if last(k) != Some(want) {
            p.push(format!("{k}={want} is missing (found {:?})", last(k)));
        }
    }
    let reload = get("ExecReload").cloned().unwrap_or_default();
    if !reload.iter().any(|r| r.ends_with("kill -HUP $MAINPID")) {
        p.push("ExecReload must send SIGHUP (kill -HUP $MAINPID)".into());
    }
    let families: BTreeSet<&str> = last("RestrictAddressFamilies")
        .unwrap_or("")
        .split_whitespace()
        .collect();
    if families != BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]) {
        p.push(format!(
            "RestrictAddressFamilies must be AF_INET AF_INET6 AF_UNIX, not {families:?}"
        ));
    }
    if !get("SystemCallFilter").is_some_and(|v| v.iter().any(|f| f == "@system-service")) {
        p.push("SystemCallFilter=@system-service is missing".into());
    }
    if last("MemoryDenyWriteExecute").is_some_and(|v| v != "no") {
        p.push(
            "MemoryDenyWriteExecute must not be set: wasmtime makes the plugins' compiled code executable with mprotect".into(),
        );
    }
    if last("ProcSubset") == Some("pid") {
        p.push("ProcSubset=pid hides /proc/sys/kernel/hostname, which the default client id comes from".into());
    }
    if last("LimitNOFILE")
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n < 4096)
    {
        p.push("LimitNOFILE must be set (at least 4096)".into());
    }
    // The plugin compile cache: plugins.cache_dir defaults to
    // $XDG_CACHE_HOME/fxbridge, which must be the CacheDirectory.
    let envs: Vec<&str> = get("Environment")
        .into_iter()
        .flatten()
        .flat_map(|e| e.split_whitespace())
        .collect();
    let cache = format!("/var/cache/{}", last("CacheDirectory").unwrap_or(""));
    if !envs
        .iter()
        .filter_map(|e| e.strip_prefix("XDG_CACHE_HOME="))
        .any(|x| Path::new(x).join("fxbridge") == Path::new(&cache))
    {
        p.push(format!(
            "Environment=XDG_CACHE_HOME must make the plugin cache ($XDG_CACHE_HOME/fxbridge) the CacheDirectory {cache}"
        ));
    }
    if envs.iter().any(|e| e.starts_with("STATE_DIRECTORY=")) {
        p.push("STATE_DIRECTORY comes from StateDirectory=, not Environment=".into());
    }
    // The example bridge.yaml's drain must fit in the stop timeout.
    let example: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("bridge.yaml")).unwrap())
            .unwrap();
    let drain = duration(at(&example, &["shutdown", "drain_timeout"]), DEFAULT_DRAIN).unwrap();
    match last("TimeoutStopSec").map(humantime::parse_duration) {
        Some(Ok(stop)) if stop >= drain + STOP_MARGIN => {}
        other => p.push(format!(
            "TimeoutStopSec must be at least {STOP_MARGIN:?} longer than shutdown.drain_timeout {drain:?} (found {other:?})"
        )),
    }
    if unit.get(&("Install".to_string(), "WantedBy".to_string()))
        != Some(&vec!["multi-user.target".to_string()])
    {
        p.push("[Install] WantedBy=multi-user.target is missing".into());
    }
    p
}

/// `systemd-analyze verify` on the unit (the binary's path pointed at the
/// built one, which verify requires to exist): `None` when systemd-analyze is
/// not installed, else what it said about the unit.
fn systemd_verify(text: &str) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fxbridge.service");
    std::fs::write(
        &file,
        text.replace("/usr/local/bin/fxbridge", env!("CARGO_BIN_EXE_fxbridge")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .ok()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = said
        .lines()
        .filter(|l| l.contains("fxbridge.service"))
        .map(str::to_string)
        .collect();
    if !out.status.success() {
        lines.push(format!("systemd-analyze verify failed: {said}"));
    }
    Some(lines)
}

/// `systemd-analyze security --offline=true`'s overall exposure of the unit
/// (0 best, 10 worst); `None` when systemd-analyze cannot tell (not
/// installed, or older than systemd 250).
fn systemd_exposure(text: &str) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fxbridge.service");
    std::fs::write(
        &file,
        text.replace("/usr/local/bin/fxbridge", env!("CARGO_BIN_EXE_fxbridge")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&file)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

#[test]
fn the_manifests_are_complete_and_agree_with_each_other() {
    let objs = load_manifests();
    let kinds: BTreeSet<&str> = objs.iter().map(Obj::kind).collect();
    for kind in [
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s");
    }
    let p = problems(&objs);
    assert!(p.is_empty(), "deploy/k8s:\n  {}", p.join("\n  "));
}

#[test]
fn the_configmaps_bridge_yaml_passes_fxbridge_check_as_mounted() {
    let objs = load_manifests();
    match fxbridge_check(&objs) {
        Ok(out) => assert!(out.contains("OK (2 routes)"), "{out}"),
        Err(e) => panic!("fxbridge check rejects the ConfigMap's bridge.yaml:\n{e}"),
    }
}

#[test]
fn kustomize_renders_every_object_when_kubectl_is_installed() {
    let out = match Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("deploy/k8s"))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("kubectl not installed ({e}): rendering not checked");
            return;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/k8s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: BTreeSet<(String, String)> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
            .map(|d| {
                let v = Value::deserialize(d).unwrap();
                let s = |p: &[&str]| str_at(&v, p).unwrap_or("").to_string();
                (s(&["kind"]), s(&["metadata", "name"]))
            })
            .collect();
    let ours: BTreeSet<(String, String)> = load_manifests()
        .iter()
        .filter(|o| o.kind() != "Kustomization")
        .map(|o| (o.kind().to_string(), o.name().to_string()))
        .collect();
    assert_eq!(rendered, ours);
}

/// The fxbridge container of the workload at `sts`, to break it.
fn container(o: &mut [Obj], sts: usize) -> &mut Value {
    &mut at_mut(&mut o[sts].doc, &["spec", "template", "spec", "containers"])
        .as_sequence_mut()
        .unwrap()[0]
}

/// Replaces `from` by `to` in the bridge.yaml of the ConfigMap at `config`.
fn edit_bridge(o: &mut [Obj], config: usize, from: &str, to: &str) {
    let v = at_mut(&mut o[config].doc, &["data", "bridge.yaml"]);
    let text = v.as_str().unwrap();
    assert!(text.contains(from), "bridge.yaml has no {from:?}");
    *v = Value::String(text.replacen(from, to, 1));
}

/// Breaks one thing at a time in a copy of the manifests; each must be caught.
#[test]
fn each_broken_manifest_is_caught() {
    let good = load_manifests();
    let idx = |kind: &str| good.iter().position(|o| o.kind() == kind).unwrap();
    let (sts, svc, pdb, mon) = (
        idx("StatefulSet"),
        idx("Service"),
        idx("PodDisruptionBudget"),
        idx("ServiceMonitor"),
    );
    let config = good
        .iter()
        .position(|o| o.kind() == "ConfigMap" && at(&o.doc, &["data", "bridge.yaml"]).is_some())
        .unwrap();
    let plugins = good
        .iter()
        .position(|o| o.kind() == "ConfigMap" && at(&o.doc, &["binaryData"]).is_some())
        .unwrap();
    type Break = Box<dyn Fn(&mut Vec<Obj>)>;
    let cases: Vec<(&str, Break)> = vec![
        (
            "readOnlyRootFilesystem",
            Box::new(move |o| {
                *at_mut(
                    container(o, sts),
                    &["securityContext", "readOnlyRootFilesystem"],
                ) = Value::Bool(false)
            }),
        ),
        (
            "allowPrivilegeEscalation",
            Box::new(move |o| {
                at_mut(container(o, sts), &["securityContext"])
                    .as_mapping_mut()
                    .unwrap()
                    .remove("allowPrivilegeEscalation");
            }),
        ),
        (
            "capabilities.drop must contain ALL",
            Box::new(move |o| {
                *at_mut(
                    container(o, sts),
                    &["securityContext", "capabilities", "drop"],
                ) = serde_yaml::from_str("[NET_RAW]").unwrap()
            }),
        ),
        (
            "runAsUser must be 65532",
            Box::new(move |o| {
                *at_mut(container(o, sts), &["securityContext", "runAsUser"]) = Value::from(0)
            }),
        ),
        (
            "readinessProbe must be an httpGet of /readyz",
            Box::new(move |o| {
                *at_mut(container(o, sts), &["readinessProbe", "httpGet", "path"]) =
                    Value::from("/healthz")
            }),
        ),
        (
            "livenessProbe's port",
            Box::new(move |o| {
                *at_mut(container(o, sts), &["livenessProbe", "httpGet", "port"]) =
                    Value::from(8080)
            }),
        ),
        (
            "resources.limits.memory is not set",
            Box::new(move |o| {
                at_mut(container(o, sts), &["resources"])
                    .as_mapping_mut()
                    .unwrap()
                    .remove("limits");
            }),
        ),
        (
            "must name a version",
            Box::new(move |o| {
                *at_mut(container(o, sts), &["image"]) =
                    Value::from("ghcr.io/fxbridge/fxbridge:latest")
            }),
        ),
        (
            "uses subPath",
            Box::new(move |o| {
                let mounts = at_mut(container(o, sts), &["volumeMounts"])
                    .as_sequence_mut()
                    .unwrap();
                mounts[0]
                    .as_mapping_mut()
                    .unwrap()
                    .insert("subPath".into(), "bridge.yaml".into());
            }),
        ),
        (
            "does not match the pod template's labels",
            Box::new(move |o| {
                *at_mut(
                    &mut o[sts].doc,
                    &[
                        "spec",
                        "selector",
                        "matchLabels",
                        "app.kubernetes.io/component",
                    ],
                ) = Value::from("other")
            }),
        ),
        (
            "must be a StatefulSet",
            Box::new(move |o| o[sts].doc["kind"] = Value::from("Deployment")),
        ),
        (
            "terminationGracePeriodSeconds 15 must be at least",
            Box::new(move |o| {
                *at_mut(
                    &mut o[sts].doc,
                    &["spec", "template", "spec", "terminationGracePeriodSeconds"],
                ) = Value::from(15)
            }),
        ),
        (
            "does not select the fxbridge pods",
            Box::new(move |o| {
                *at_mut(
                    &mut o[pdb].doc,
                    &["spec", "selector", "matchLabels", "app.kubernetes.io/name"],
                ) = Value::from("other")
            }),
        ),
        (
            "is not a port name of the selected Service",
            Box::new(move |o| {
                let e = at_mut(&mut o[mon].doc, &["spec", "endpoints"])
                    .as_sequence_mut()
                    .unwrap();
                e[0]["port"] = Value::from("metrics");
            }),
        ),
        (
            "selects no Service here",
            Box::new(move |o| {
                *at_mut(
                    &mut o[mon].doc,
                    &["spec", "selector", "matchLabels", "app.kubernetes.io/name"],
                ) = Value::from("other")
            }),
        ),
        (
            "must authorize with the Secret key admin.token reads",
            Box::new(move |o| {
                let e = at_mut(&mut o[mon].doc, &["spec", "endpoints"])
                    .as_sequence_mut()
                    .unwrap();
                e[0]["authorization"]["credentials"]["key"] = Value::from("mqtt-password");
            }),
        ),
        (
            "spec.selector",
            Box::new(move |o| {
                *at_mut(
                    &mut o[svc].doc,
                    &["spec", "selector", "app.kubernetes.io/name"],
                ) = Value::from("other")
            }),
        ),
        (
            "mqtt.client_id must not be set",
            Box::new(move |o| {
                edit_bridge(
                    o,
                    config,
                    "\n  persistent_session:",
                    "\n  client_id: fxbridge\n  persistent_session:",
                )
            }),
        ),
        (
            "mqtt.leave_shared_on_stop must stay on",
            Box::new(move |o| {
                edit_bridge(
                    o,
                    config,
                    "leave_shared_on_stop: true",
                    "leave_shared_on_stop: false",
                )
            }),
        ),
        (
            "must be a $share/<group>/... filter",
            Box::new(move |o| {
                edit_bridge(
                    o,
                    config,
                    "$share/fxbridge/sensors/+/temperature",
                    "sensors/+/temperature",
                )
            }),
        ),
        (
            "several $share groups",
            Box::new(move |o| {
                edit_bridge(o, config, "$share/fxbridge/devices", "$share/other/devices")
            }),
        ),
        (
            "admin.listen 127.0.0.1:9090 must be 0.0.0.0",
            Box::new(move |o| {
                edit_bridge(o, config, "listen: 0.0.0.0:9090", "listen: 127.0.0.1:9090")
            }),
        ),
        (
            "the container port `admin` must be admin.listen's port 9091",
            Box::new(move |o| {
                edit_bridge(o, config, "listen: 0.0.0.0:9090", "listen: 0.0.0.0:9091")
            }),
        ),
        (
            "plugins.cache_dir /cache must be on a writable emptyDir",
            Box::new(move |o| {
                edit_bridge(
                    o,
                    config,
                    "cache_dir: /var/cache/fxbridge",
                    "cache_dir: /cache",
                )
            }),
        ),
        (
            "longer than shutdown.drain_timeout 26s",
            Box::new(move |o| edit_bridge(o, config, "drain_timeout: 20s", "drain_timeout: 26s")),
        ),
        (
            "needs key \"other.wasm\" in ConfigMap",
            Box::new(move |o| {
                edit_bridge(
                    o,
                    config,
                    "/plugins/sensor-normalize.wasm",
                    "/plugins/other.wasm",
                )
            }),
        ),
        (
            "reads $MQTT_USER, which the container's env does not set",
            Box::new(move |o| edit_bridge(o, config, "{env: MQTT_USERNAME}", "{env: MQTT_USER}")),
        ),
        (
            "run bash deploy/k8s/plugins.sh",
            Box::new(move |o| {
                let data = at_mut(&mut o[plugins].doc, &["binaryData"])
                    .as_mapping_mut()
                    .unwrap();
                let v = data.values_mut().next().unwrap();
                let b64 = base64::engine::general_purpose::STANDARD;
                let mut bytes = b64.decode(v.as_str().unwrap()).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                *v = Value::from(b64.encode(bytes));
            }),
        ),
        (
            "does not list statefulset.yaml",
            Box::new(move |o| {
                let k = o.iter_mut().find(|x| x.kind() == "Kustomization").unwrap();
                let r = at_mut(&mut k.doc, &["resources"])
                    .as_sequence_mut()
                    .unwrap();
                r.retain(|x| x.as_str() != Some("statefulset.yaml"));
            }),
        ),
    ];
    let p = problems(&good);
    assert!(p.is_empty(), "the manifests as they are: {p:#?}");
    for (want, break_it) in &cases {
        let mut broken = good.clone();
        break_it(&mut broken);
        let p = problems(&broken);
        assert!(
            p.iter().any(|m| m.contains(want)),
            "breaking {want:?} was not caught; problems: {p:#?}"
        );
    }
}

/// The real check catches what only loading the config can: a secret file
/// that is not there, a component that is not one.
#[test]
fn fxbridge_check_catches_a_broken_layout() {
    let good = load_manifests();
    let secret = good.iter().position(|o| o.kind() == "Secret").unwrap();
    let mut no_password = good.clone();
    at_mut(&mut no_password[secret].doc, &["stringData"])
        .as_mapping_mut()
        .unwrap()
        .remove("mqtt-password");
    let e = fxbridge_check(&no_password).unwrap_err();
    assert!(
        e.contains("mqtt.password") && e.contains("cannot read"),
        "{e}"
    );

    let plugins = good
        .iter()
        .position(|o| o.kind() == "ConfigMap" && at(&o.doc, &["binaryData"]).is_some())
        .unwrap();
    let mut not_a_component = good.clone();
    let data = at_mut(&mut not_a_component[plugins].doc, &["binaryData"])
        .as_mapping_mut()
        .unwrap();
    *data.values_mut().next().unwrap() = Value::from("AGFzbQEAAAA="); // an empty core module
    let e = fxbridge_check(&not_a_component).unwrap_err();
    assert!(e.contains("sensor-normalize.wasm"), "{e}");
}

#[test]
fn the_systemd_unit_is_sandboxed_and_reloads_with_sighup() {
    let text = std::fs::read_to_string(root().join(UNIT)).unwrap();
    let p = unit_problems(&text);
    assert!(p.is_empty(), "{UNIT}:\n  {}", p.join("\n  "));
    match systemd_verify(&text) {
        None => eprintln!("systemd-analyze not installed: {UNIT} parsed, not verified"),
        Some(said) => assert!(
            said.is_empty(),
            "systemd-analyze verify {UNIT}:\n{}",
            said.join("\n")
        ),
    }
    // systemd's own rating of the sandbox: 1.2 ("OK") as written; 2 or more
    // means a protection went missing.
    match systemd_exposure(&text) {
        None => eprintln!("systemd-analyze security --offline unavailable: exposure not rated"),
        Some(e) => assert!(e < 2.0, "{UNIT}: systemd-analyze security rates it {e}"),
    }
}

#[test]
fn each_broken_unit_is_caught() {
    let text = std::fs::read_to_string(root().join(UNIT)).unwrap();
    let cases = [
        (
            "ProtectSystem=strict\n",
            "",
            "ProtectSystem=strict is missing",
        ),
        (
            "[Service]\n",
            "[Service]\nMemoryDenyWriteExecute=yes\n",
            "MemoryDenyWriteExecute must not be set",
        ),
        (
            "ExecReload=/bin/kill -HUP $MAINPID\n",
            "",
            "ExecReload must send SIGHUP",
        ),
        ("Type=simple\n", "Type=notify\n", "Type=simple is missing"),
        (
            "Environment=XDG_CACHE_HOME=/var/cache\n",
            "",
            "Environment=XDG_CACHE_HOME",
        ),
        (
            "TimeoutStopSec=30s\n",
            "TimeoutStopSec=5s\n",
            "TimeoutStopSec",
        ),
        (
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n",
            "RestrictAddressFamilies",
        ),
        (
            "[Service]\n",
            "[Service]\nProcSubset=pid\n",
            "ProcSubset=pid",
        ),
    ];
    for (from, to, want) in cases {
        assert!(text.contains(from), "{UNIT} has no {from:?}");
        let p = unit_problems(&text.replacen(from, to, 1));
        assert!(
            p.iter().any(|m| m.contains(want)),
            "{from:?} -> {to:?} not caught ({want}): {p:#?}"
        );
    }
    // What only systemd knows: a misspelt setting.
    let misspelt = text.replacen("PrivateTmp=yes", "PrivateTemp=yes", 1);
    if let Some(said) = systemd_verify(&misspelt) {
        assert!(
            said.iter().any(|l| l.contains("PrivateTemp")),
            "systemd-analyze verify missed a misspelt key: {said:?}"
        );
    }
}
