//! The deployment files, checked against the binary: the `Dockerfile` and
//! the Kubernetes manifests under `deploy/kubernetes/`.
//!
//! Nothing here runs a container or a cluster. What can be checked is: the
//! YAML parses; every variable and flag the files pass to `meshcache node`
//! is one that `meshcache node --help` lists, and the configuration they
//! give is accepted by `meshcache node --print-config`; the probes, ports,
//! Services and seed name agree with the binary and with each other; the
//! grace period covers the drain; and the certificates `make-certs.sh`
//! makes load in a node that then answers the probes.
//!
//! Every command runs with every `MESHCACHE_*` variable of the test's own
//! environment removed, on loopback only, with system-chosen ports and
//! bounded waits.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::{exited, node_addrs, sigterm, Guard, TempDir, BIN};
use common::wait::block_on;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the downward-API helpers stand for when the manifest's
/// configuration is tried here: the first pod, on loopback.
const POD_NAME: &str = "meshcache-0";
const POD_IP: &str = "127.0.0.1";
const POD_NAMESPACE: &str = "cache";

fn k8s_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes")
}

// ---- the binary -----------------------------------------------------------

/// `meshcache ARGS` with no `MESHCACHE_*` variable of this environment.
fn meshcache(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MESHCACHE_") {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `c` to the end; it must finish within a minute.
fn output(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{c:?} did not finish within 60 s");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What `meshcache node --help` lists: its flags and its variables.
struct NodeHelp {
    flags: BTreeSet<String>,
    vars: BTreeSet<String>,
}

fn node_help() -> NodeHelp {
    let out = output(meshcache(&["node", "--help"]));
    assert!(out.status.success(), "meshcache node --help: {out:?}");
    let help = text(&out.stdout);
    let mut flags = BTreeSet::new();
    for line in help.lines().map(str::trim_start).filter(|l| l.starts_with('-')) {
        // `-h, --help` or `--name <NAME>`: the long flag before the value.
        if let Some(flag) = line.split([' ', ',', '=']).find(|t| t.starts_with("--")) {
            flags.insert(flag.to_owned());
        }
    }
    let vars: BTreeSet<String> = help
        .match_indices("[env: ")
        .map(|(at, m)| {
            let rest = &help[at + m.len()..];
            rest[..rest.find('=').expect("[env: NAME=...]")].to_owned()
        })
        .collect();
    // The parse must have found something, or every check below is void.
    for (flag, var) in [("--name", "MESHCACHE_NAME"), ("--seed", "MESHCACHE_SEEDS"), ("--print-config", "")] {
        assert!(flags.contains(flag), "{flag} not found in meshcache node --help:\n{help}");
        assert!(var.is_empty() || vars.contains(var), "{var} not found in meshcache node --help:\n{help}");
    }
    NodeHelp { flags, vars }
}

/// `meshcache node --print-config` with `env` and `args`; its TOML, or a
/// panic with its stderr and `what`.
fn print_config(env: &[(String, String)], args: &[String], what: &str) -> toml::Table {
    let mut c = meshcache(&["node", "--print-config"]);
    c.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    let out = output(c);
    assert!(
        out.status.success(),
        "meshcache node --print-config refuses the configuration of {what} ({}):\n{}\nenvironment: {env:?}\nargs: {args:?}",
        out.status,
        text(&out.stderr).trim()
    );
    text(&out.stdout).parse().unwrap_or_else(|e| panic!("--print-config printed no TOML ({e}):\n{out:?}"))
}

// ---- the manifests --------------------------------------------------------

/// Every document of every YAML file under deploy/kubernetes, with its
/// file's name.
fn manifests() -> Vec<(String, Yaml)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&path).unwrap();
        let parsed = YamlLoader::load_from_str(&source).unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
        assert!(!parsed.is_empty(), "{name} holds no YAML document");
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

fn s(y: &Yaml) -> Option<&str> {
    y.as_str()
}

fn kinds<'a>(docs: &'a [(String, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|(_, d)| s(&d["kind"]) == Some(kind)).map(|(_, d)| d).collect()
}

fn only<'a>(docs: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    match kinds(docs, kind)[..] {
        [one] => one,
        ref all => panic!("expected one {kind} under deploy/kubernetes, found {}", all.len()),
    }
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

/// The meshcache container of the StatefulSet's pod template.
fn container(sts: &Yaml) -> &Yaml {
    let containers = list(&sts["spec"]["template"]["spec"]["containers"]);
    match containers {
        [one] => one,
        _ => containers
            .iter()
            .find(|c| s(&c["name"]) == Some("meshcache"))
            .expect("the StatefulSet has a container named meshcache"),
    }
}

/// One `env` entry of the container.
struct EnvVar {
    name: String,
    /// `value`, as written (with `$(NAME)` references unexpanded).
    value: Option<String>,
    /// The downward-API field of `valueFrom.fieldRef`.
    field: Option<String>,
    /// Whether it comes from `valueFrom.secretKeyRef`.
    secret: bool,
}

fn env_of(container: &Yaml) -> Vec<EnvVar> {
    list(&container["env"])
        .iter()
        .map(|e| {
            let name = s(&e["name"]).unwrap_or_else(|| panic!("an env entry without a name: {e:?}")).to_owned();
            let value = match &e["value"] {
                Yaml::String(v) => Some(v.clone()),
                Yaml::BadValue => None,
                other => panic!("env {name}: value {other:?} is not a string (Kubernetes wants strings: quote it)"),
            };
            let field = s(&e["valueFrom"]["fieldRef"]["fieldPath"]).map(str::to_owned);
            let secret = !e["valueFrom"]["secretKeyRef"].is_badvalue();
            assert!(
                value.is_some() || field.is_some() || secret,
                "env {name}: neither a value, a fieldRef nor a secretKeyRef"
            );
            EnvVar { name, value, field, secret }
        })
        .collect()
}

/// `$(NAME)` references in `value`.
fn references(value: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("$(") {
        let Some(end) = rest[at..].find(')') else { break };
        refs.push(&rest[at + 2..at + end]);
        rest = &rest[at + end + 1..];
    }
    refs
}

/// The container's environment as the pod `POD_NAME` at `POD_IP` would
/// see it: downward-API fields filled in, a placeholder for a secret, and
/// each `$(NAME)` expanded as Kubernetes does, from a variable defined
/// earlier in the list (anything else is an error here, though Kubernetes
/// would leave it unexpanded).
fn resolved_env(env: &[EnvVar]) -> Vec<(String, String)> {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    let mut out = Vec::new();
    for e in env {
        let value = if let Some(written) = &e.value {
            let mut v = written.clone();
            for r in references(written) {
                let by = seen
                    .get(r)
                    .unwrap_or_else(|| panic!("env {}: $({r}) is not a variable defined earlier in the list", e.name));
                v = v.replace(&format!("$({r})"), by);
            }
            v
        } else if let Some(f) = &e.field {
            match f.as_str() {
                "metadata.name" => POD_NAME.to_owned(),
                "status.podIP" => POD_IP.to_owned(),
                "metadata.namespace" => POD_NAMESPACE.to_owned(),
                other => panic!("env {}: the test has no value for the field {other}", e.name),
            }
        } else {
            "not-a-real-secret".to_owned()
        };
        seen.insert(&e.name, value.clone());
        out.push((e.name.clone(), value));
    }
    out
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn addr(value: &str, what: &str) -> SocketAddr {
    value.parse().unwrap_or_else(|e| panic!("{what} = {value:?} is not IP:PORT: {e}"))
}

/// The container's ports: (name, number, protocol).
fn container_ports(container: &Yaml) -> Vec<(Option<String>, i64, String)> {
    list(&container["ports"])
        .iter()
        .map(|p| {
            let number = p["containerPort"].as_i64().unwrap_or_else(|| panic!("a port without containerPort: {p:?}"));
            (s(&p["name"]).map(str::to_owned), number, s(&p["protocol"]).unwrap_or("TCP").to_owned())
        })
        .collect()
}

/// The container port that `port` (a name or a number, as a probe or a
/// Service's targetPort gives it) stands for.
fn container_port(container: &Yaml, port: &Yaml, what: &str) -> (i64, String) {
    let ports = container_ports(container);
    let found = match port {
        Yaml::Integer(n) => ports.iter().find(|(_, number, _)| number == n),
        Yaml::String(name) => ports.iter().find(|(n, _, _)| n.as_deref() == Some(name)),
        other => panic!("{what}: port {other:?} is neither a number nor a name"),
    };
    let (_, number, protocol) =
        found.unwrap_or_else(|| panic!("{what}: port {port:?} is not a port of the container ({ports:?})"));
    (*number, protocol.clone())
}

/// The StatefulSet, its container, the container's env as written and
/// resolved.
struct Pod<'a> {
    sts: &'a Yaml,
    container: &'a Yaml,
    env: Vec<EnvVar>,
    resolved: Vec<(String, String)>,
    args: Vec<String>,
}

fn pod(docs: &[(String, Yaml)]) -> Pod<'_> {
    let sts = only(docs, "StatefulSet");
    let container = container(sts);
    let env = env_of(container);
    let resolved = resolved_env(&env);
    let command: Vec<String> = list(&container["command"]).iter().filter_map(s).map(str::to_owned).collect();
    assert!(
        command.is_empty() || command == ["meshcache", "node"],
        "the container's command is {command:?}: leave it out (the image runs `meshcache node`) or make it \
         [meshcache, node]"
    );
    let args = list(&container["args"])
        .iter()
        .map(|a| s(a).unwrap_or_else(|| panic!("args entry {a:?} is not a string")).to_owned())
        .collect();
    Pod { sts, container, env, resolved, args }
}

// ---- the checks: manifests ------------------------------------------------

#[test]
fn every_manifest_parses() {
    let docs = manifests();
    for (file, d) in &docs {
        assert!(
            s(&d["apiVersion"]).is_some() && s(&d["kind"]).is_some(),
            "{file}: a document without apiVersion and kind"
        );
        assert!(s(&d["metadata"]["name"]).is_some(), "{file}: a {:?} without metadata.name", d["kind"]);
    }
    for (kind, count) in [("StatefulSet", 1), ("Service", 2), ("PodDisruptionBudget", 1)] {
        assert_eq!(kinds(&docs, kind).len(), count, "{kind}s under deploy/kubernetes");
    }
}

#[test]
fn statefulset_passes_only_what_meshcache_node_accepts() {
    let docs = manifests();
    let pod = pod(&docs);
    let help = node_help();
    for e in &pod.env {
        if e.name.starts_with("MESHCACHE_") {
            assert!(
                help.vars.contains(&e.name),
                "env {} is not a variable meshcache node reads; it reads: {:?}",
                e.name,
                help.vars
            );
        } else {
            // A downward-API helper, referenced by a MESHCACHE_ variable.
            assert!(
                e.field.is_some(),
                "env {} is neither a MESHCACHE_* variable nor a downward-API helper (valueFrom.fieldRef)",
                e.name
            );
            assert!(
                pod.env.iter().any(|o| o.value.as_deref().is_some_and(|v| references(v).contains(&e.name.as_str()))),
                "env {} is defined but no variable refers to it as $({})",
                e.name,
                e.name
            );
        }
    }
    for a in pod.args.iter().filter(|a| a.starts_with('-')) {
        let flag = a.split('=').next().unwrap();
        assert!(help.flags.contains(flag), "args: {flag} is not a flag of meshcache node; it takes: {:?}", help.flags);
    }
    assert_eq!(var(&pod.resolved, "MESHCACHE_NAME"), Some(POD_NAME), "the node name is the pod's name");
}

#[test]
fn statefulset_configuration_is_accepted_by_meshcache_node() {
    let docs = manifests();
    let pod = pod(&docs);
    let config = print_config(&pod.resolved, &pod.args, "statefulset.yaml");
    let get = |k: &str| config.get(k).unwrap_or_else(|| panic!("--print-config has no {k}:\n{config}"));
    assert_eq!(get("name").as_str(), Some(POD_NAME), "{config}");
    let listen = addr(var(&pod.resolved, "MESHCACHE_LISTEN").expect("MESHCACHE_LISTEN"), "MESHCACHE_LISTEN");
    assert_eq!(get("listen").as_str(), Some(listen.to_string().as_str()), "{config}");
    assert_eq!(get("advertise").as_str(), Some(format!("{POD_IP}:{}", listen.port()).as_str()), "{config}");
    let seeds: Vec<&str> = get("seeds").as_array().expect("seeds").iter().filter_map(|v| v.as_str()).collect();
    let given: Vec<&str> = var(&pod.resolved, "MESHCACHE_SEEDS").expect("MESHCACHE_SEEDS").split(',').collect();
    assert_eq!(seeds, given, "{config}");
}

#[test]
fn probes_are_the_binarys_on_the_metrics_port() {
    let docs = manifests();
    let pod = pod(&docs);
    let metrics = addr(var(&pod.resolved, "MESHCACHE_METRICS").expect("MESHCACHE_METRICS is set"), "MESHCACHE_METRICS");
    assert!(metrics.ip().is_unspecified(), "MESHCACHE_METRICS {metrics}: the kubelet probes the pod IP");
    for (probe, path) in [("readinessProbe", meshcache::http::READYZ), ("livenessProbe", meshcache::http::HEALTHZ)] {
        let get = &pod.container[probe]["httpGet"];
        assert!(!get.is_badvalue(), "the container has no {probe}.httpGet");
        assert_eq!(s(&get["path"]), Some(path), "{probe}.httpGet.path: meshcache serves it at {path}");
        assert!(matches!(s(&get["scheme"]), None | Some("HTTP")), "{probe}: meshcache serves plain HTTP");
        let (port, protocol) = container_port(pod.container, &get["port"], probe);
        assert_eq!(
            (port, protocol.as_str()),
            (i64::from(metrics.port()), "TCP"),
            "{probe}.httpGet.port: the metrics port is {} (MESHCACHE_METRICS={metrics})",
            metrics.port()
        );
    }
}

#[test]
fn services_and_seed_name_match_the_statefulset() {
    let docs = manifests();
    let pod = pod(&docs);
    let services = kinds(&docs, "Service");
    let headless: Vec<&Yaml> =
        services.iter().copied().filter(|svc| s(&svc["spec"]["clusterIP"]) == Some("None")).collect();
    let [headless] = headless[..] else { panic!("expected one headless Service (clusterIP: None)") };
    let headless_name = s(&headless["metadata"]["name"]).unwrap();
    assert_eq!(s(&pod.sts["spec"]["serviceName"]), Some(headless_name), "the StatefulSet's serviceName");
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "{headless_name}: publishNotReadyAddresses must be true (a peer is ready only after it synced with a seed)"
    );

    // Every Service selects the pods.
    let labels = &pod.sts["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Yaml, what: &str| {
        let pairs = selector.as_hash().unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(!pairs.is_empty(), "{what}: an empty selector");
        for (k, v) in pairs {
            assert_eq!(&labels[s(k).unwrap()], v, "{what}: selector {k:?} does not match the pod template's labels");
        }
    };
    for svc in &services {
        selects_pods(&svc["spec"]["selector"], s(&svc["metadata"]["name"]).unwrap());
    }
    selects_pods(&only(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], "the PodDisruptionBudget");
    assert_eq!(only(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"].as_i64(), Some(1));

    // The mesh port: QUIC over UDP, on the headless Service.
    let listen = addr(var(&pod.resolved, "MESHCACHE_LISTEN").expect("MESHCACHE_LISTEN"), "MESHCACHE_LISTEN");
    let mesh_port = list(&headless["spec"]["ports"])
        .iter()
        .find(|p| p["port"].as_i64() == Some(i64::from(listen.port())))
        .unwrap_or_else(|| panic!("{headless_name} has no port {} (MESHCACHE_LISTEN={listen})", listen.port()));
    assert_eq!(s(&mesh_port["protocol"]), Some("UDP"), "{headless_name} port {}: QUIC is UDP", listen.port());
    let target = if mesh_port["targetPort"].is_badvalue() { &mesh_port["port"] } else { &mesh_port["targetPort"] };
    let (number, protocol) = container_port(pod.container, target, headless_name);
    assert_eq!((number, protocol.as_str()), (i64::from(listen.port()), "UDP"), "{headless_name}'s targetPort");

    // The seeds: the headless Service's name, at the mesh port.
    let advertise = var(&pod.resolved, "MESHCACHE_ADVERTISE").expect("MESHCACHE_ADVERTISE (listen is a wildcard)");
    assert_eq!(addr(advertise, "MESHCACHE_ADVERTISE").port(), listen.port(), "MESHCACHE_ADVERTISE's port");
    let seeds = var(&pod.resolved, "MESHCACHE_SEEDS").expect("MESHCACHE_SEEDS");
    for seed in seeds.split(',') {
        let (host, port) = seed.rsplit_once(':').unwrap_or_else(|| panic!("seed {seed:?} has no port"));
        assert_eq!(port, listen.port().to_string(), "seed {seed}: the mesh port is {}", listen.port());
        let full = format!("{headless_name}.{POD_NAMESPACE}.svc.cluster.local");
        let names = [
            headless_name,
            &format!("{headless_name}.{POD_NAMESPACE}"),
            &format!("{headless_name}.{POD_NAMESPACE}.svc"),
            &full,
        ];
        assert!(names.contains(&host), "seed {seed}: the host must be the headless Service's name, {names:?}");
    }

    // Redis clients: a Service of ready pods on the Redis-protocol port.
    let resp = addr(var(&pod.resolved, "MESHCACHE_RESP").expect("MESHCACHE_RESP"), "MESHCACHE_RESP");
    let requirepass = pod.env.iter().find(|e| e.name == "MESHCACHE_REQUIREPASS");
    assert!(
        requirepass.is_some_and(|e| e.secret),
        "MESHCACHE_RESP {resp} is exposed: set MESHCACHE_REQUIREPASS, from a Secret (valueFrom.secretKeyRef)"
    );
    let clients: Vec<&Yaml> =
        services.iter().copied().filter(|svc| s(&svc["spec"]["clusterIP"]) != Some("None")).collect();
    let [clients] = clients[..] else { panic!("expected one Service for Redis clients") };
    assert_ne!(
        clients["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "Redis clients go to ready pods only"
    );
    let ports = list(&clients["spec"]["ports"]);
    assert!(!ports.is_empty(), "the Redis clients' Service has no port");
    for p in ports {
        let target = if p["targetPort"].is_badvalue() { &p["port"] } else { &p["targetPort"] };
        let (number, protocol) = container_port(pod.container, target, "the Redis clients' Service");
        assert_eq!((number, protocol.as_str()), (i64::from(resp.port()), "TCP"), "the Redis clients' targetPort");
    }
}

#[test]
fn grace_period_covers_the_drain() {
    let docs = manifests();
    let pod = pod(&docs);
    // The drain timeout the node would use: the manifest's, or the default.
    let config = print_config(&pod.resolved, &pod.args, "statefulset.yaml");
    let drain_ms = config.get("drain_timeout").and_then(|v| v.as_integer()).expect("drain_timeout in --print-config");
    let grace = pod.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    assert!(
        grace * 1000 >= 2 * drain_ms + 5000,
        "terminationGracePeriodSeconds {grace} is short of 2 x drain_timeout ({drain_ms} ms) + 5 s"
    );
}

#[test]
fn statefulset_is_locked_down() {
    let docs = manifests();
    let pod = pod(&docs);
    let spec = &pod.sts["spec"]["template"]["spec"];
    let c = &pod.container["securityContext"];
    let non_root = c["runAsNonRoot"].as_bool().or(spec["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(non_root, Some(true), "runAsNonRoot");
    assert_eq!(c["allowPrivilegeEscalation"].as_bool(), Some(false), "allowPrivilegeEscalation");
    assert_eq!(c["readOnlyRootFilesystem"].as_bool(), Some(true), "readOnlyRootFilesystem");
    assert!(list(&c["capabilities"]["drop"]).iter().any(|d| s(d) == Some("ALL")), "capabilities.drop: [ALL]");

    // The memory bound sits below the memory limit.
    let limit = s(&pod.container["resources"]["limits"]["memory"]).expect("a memory limit");
    let limit: u64 =
        limit.strip_suffix("Mi").and_then(|n| n.parse().ok()).map(|n: u64| n << 20).expect("a limit in Mi");
    let config = print_config(&pod.resolved, &pod.args, "statefulset.yaml");
    let bound = config.get("max_bytes").and_then(|v| v.as_integer()).expect("max_bytes is set") as u64;
    // The resident-set target of the bound (BENCHMARKS.md, target 9).
    assert!((bound as f64) * 1.15 + 40e6 <= limit as f64, "max_bytes {bound} leaves too little room under {limit}");
}

/// The certificate directory is the Secret volume's, mounted whole.
#[test]
fn certificates_come_from_a_secret_volume() {
    let docs = manifests();
    let pod = pod(&docs);
    let certs = var(&pod.resolved, "MESHCACHE_CERTS").expect("MESHCACHE_CERTS is set");
    let mount = list(&pod.container["volumeMounts"])
        .iter()
        .find(|m| s(&m["mountPath"]) == Some(certs))
        .unwrap_or_else(|| panic!("no volume is mounted at MESHCACHE_CERTS={certs}"));
    assert!(
        mount["subPath"].is_badvalue(),
        "a subPath mount is never updated in place: rotation needs the whole volume"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true), "the certificates are mounted read-only");
    let volume = list(&pod.sts["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume is defined");
    let secret = s(&volume["secret"]["secretName"]).expect("the certificate volume is a Secret");
    let mode = volume["secret"]["defaultMode"].as_i64().expect("defaultMode");
    assert_eq!(mode & 0o007, 0, "defaultMode {mode:o}: the keys must not be world-readable");
    // make-certs.sh makes that Secret.
    let script = std::fs::read_to_string(k8s_dir().join("make-certs.sh")).unwrap();
    assert!(script.contains(&format!("secret={secret}\n")), "make-certs.sh makes a Secret other than {secret}");
}

/// make-certs.sh makes certificates that a node, configured by the
/// manifest, loads; the node then answers the probes at their paths.
#[test]
fn make_certs_makes_certificates_a_node_loads() {
    let docs = manifests();
    let pod = pod(&docs);
    let tmp = TempDir::new("deploy-certs");
    let dir = tmp.path("certs");
    let mut script = Command::new("bash");
    script
        .arg(k8s_dir().join("make-certs.sh"))
        .args(["2", POD_NAMESPACE])
        .env("MESHCACHE", BIN)
        .env("CERTS_DIR", &dir)
        .env_remove("APPLY")
        .env_remove("FORCE")
        .current_dir(&tmp.0);
    let out = output(script);
    assert!(out.status.success(), "make-certs.sh: {out:?}");
    let printed = text(&out.stdout);
    let kubectl = printed
        .lines()
        .find(|l| l.contains("create secret generic meshcache-certs "))
        .unwrap_or_else(|| panic!("make-certs.sh printed no command for the Secret meshcache-certs:\n{printed}"));
    for f in ["ca.crt", "meshcache-0.crt", "meshcache-0.key", "meshcache-1.crt", "meshcache-1.key"] {
        assert!(dir.join(f).exists(), "make-certs.sh did not write {f}:\n{printed}");
        assert!(
            kubectl.contains(&format!("--from-file={} ", dir.join(f).display())),
            "the Secret lacks {f}: {kubectl}"
        );
    }
    assert!(!kubectl.contains("ca.key"), "ca.key must stay out of the Secret: {kubectl}");

    // The manifest's configuration, on loopback with system-chosen ports,
    // for the second pod, with no seeds (nothing to join here).
    let mut env: Vec<(String, String)> =
        pod.resolved.iter().filter(|(k, _)| k != "MESHCACHE_SEEDS" && k != "MESHCACHE_ADVERTISE").cloned().collect();
    let addr_file = tmp.path("addrs");
    for (k, v) in [
        ("MESHCACHE_NAME", "meshcache-1".to_owned()),
        ("MESHCACHE_CERTS", dir.display().to_string()),
        ("MESHCACHE_LISTEN", "127.0.0.1:0".to_owned()),
        ("MESHCACHE_METRICS", "127.0.0.1:0".to_owned()),
        ("MESHCACHE_RESP", "127.0.0.1:0".to_owned()),
        ("MESHCACHE_ADMIN", "127.0.0.1:0".to_owned()),
        ("MESHCACHE_ADDR_FILE", addr_file.display().to_string()),
    ] {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    }
    let log = tmp.path("node.log");
    let mut c = meshcache(&["node"]);
    c.args(&pod.args).envs(env.iter().map(|(k, v)| (k, v))).current_dir(&tmp.0).stdout(Stdio::null());
    c.stderr(std::fs::File::create(&log).unwrap());
    let mut node = Guard(c.spawn().expect("spawn meshcache node"));
    block_on(async {
        let addrs = node_addrs(&mut node.0, &addr_file, &log).await;
        let metrics = addrs.metrics.expect("the node serves HTTP");
        let (code, body) = common::http::request(metrics, "GET", meshcache::http::HEALTHZ).await;
        assert_eq!((code, body.trim()), (200, "ok"), "{}", meshcache::http::HEALTHZ);
        // Without seeds the peer is bootstrapped at once.
        common::wait::eventually_async("the node is ready", || async move {
            common::http::request(metrics, "GET", meshcache::http::READYZ).await.0 == 200
        })
        .await;
        let (code, body) = common::http::request(metrics, "GET", meshcache::http::READYZ).await;
        assert_eq!((code, body.trim()), (200, "ready"), "{}", meshcache::http::READYZ);
        sigterm(&node.0);
        let status = exited(&mut node.0, Duration::from_secs(60)).await.expect("the node exits after SIGTERM");
        assert!(
            status.success(),
            "the drain ends with exit 0: {status}; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
    });
}

// ---- the Dockerfile -------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined and comments
/// dropped: (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in source.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (op, rest) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
                out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// `ENV A=1 B=2` (or the old `ENV A 1`): the pairs, unquoted.
fn env_pairs(args: &str) -> Vec<(String, String)> {
    let unquote = |v: &str| v.trim_matches('"').to_owned();
    if !args.split_whitespace().next().unwrap_or("").contains('=') {
        let (k, v) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        return vec![(k.to_owned(), unquote(v.trim()))];
    }
    args.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("ENV {kv:?}: not NAME=VALUE"));
            (k.to_owned(), unquote(v))
        })
        .collect()
}

/// A JSON-array instruction (`["a", "b"]`) as its strings.
fn exec_form(args: &str) -> Vec<String> {
    let inner = args.trim().strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or_else(|| {
        panic!("{args:?}: use the exec form, [\"...\"], so that meshcache is PID 1 and gets SIGTERM itself")
    });
    inner.split(',').map(|p| p.trim().trim_matches('"').to_owned()).collect()
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|n| n.parse().unwrap_or_else(|_| panic!("version {v:?}"))).collect()
}

#[test]
fn dockerfile_runs_meshcache_node_as_non_root() {
    let steps = dockerfile();
    let last = |op: &str| steps.iter().rev().find(|(o, _)| o == op).map(|(_, a)| a.as_str());

    let entry = exec_form(last("ENTRYPOINT").expect("an ENTRYPOINT"));
    assert!(
        entry.len() == 2 && (entry[0] == "meshcache" || entry[0].ends_with("/meshcache")) && entry[1] == "node",
        "ENTRYPOINT {entry:?}: it must be meshcache node"
    );
    assert!(last("CMD").is_none(), "a CMD would be passed to meshcache node as arguments");
    assert_eq!(last("STOPSIGNAL"), Some("SIGTERM"), "meshcache drains on SIGTERM");

    let user = last("USER").expect("a USER: the image must not run as root");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: a numeric non-zero UID, so that runAsNonRoot can verify it"
    );

    let help = node_help();
    let env: Vec<(String, String)> = steps.iter().filter(|(o, _)| o == "ENV").flat_map(|(_, a)| env_pairs(a)).collect();
    assert!(!env.is_empty(), "the image is configured by ENV MESHCACHE_*");
    for (k, _) in &env {
        assert!(help.vars.contains(k), "ENV {k} is not a variable meshcache node reads; it reads: {:?}", help.vars);
    }
    // Accepted by the binary, with what each container must add.
    let mut with_node = env.clone();
    with_node.push(("MESHCACHE_NAME".into(), "a".into()));
    with_node.push(("MESHCACHE_ADVERTISE".into(), "127.0.0.1:7946".into()));
    print_config(&with_node, &[], "the Dockerfile's ENV");

    // EXPOSE lists the ports the defaults open beyond loopback: QUIC over
    // UDP, the Redis protocol and HTTP over TCP.
    let exposed: BTreeSet<String> = steps
        .iter()
        .filter(|(o, _)| o == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace().map(|p| if p.contains('/') { p.to_owned() } else { format!("{p}/tcp") })
        })
        .collect();
    let mut opened = BTreeSet::new();
    for (k, proto) in [("MESHCACHE_LISTEN", "udp"), ("MESHCACHE_RESP", "tcp"), ("MESHCACHE_METRICS", "tcp")] {
        if let Some((_, v)) = env.iter().find(|(name, _)| name == k) {
            let a = addr(v, k);
            if !a.ip().is_loopback() {
                opened.insert(format!("{}/{proto}", a.port()));
            }
        }
    }
    assert_eq!(exposed, opened, "EXPOSE against the ports the image's ENV opens");

    // The builder's Rust is at least the crate's rust-version.
    let rust = steps
        .iter()
        .find_map(|(o, a)| (o == "ARG").then(|| a.strip_prefix("RUST_VERSION=")).flatten())
        .expect("ARG RUST_VERSION=...");
    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let msrv = cargo.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version").trim_matches('"');
    assert!(version(rust) >= version(msrv), "the builder's Rust {rust} is older than rust-version {msrv}");
    assert!(
        steps.iter().any(|(o, a)| o == "FROM" && a.starts_with("rust:${RUST_VERSION}")),
        "the build stage is rust:${{RUST_VERSION}}-..."
    );
    assert!(
        steps.iter().any(|(o, a)| o == "RUN" && a.contains("cargo build --release --locked --bin meshcache")),
        "the build runs cargo build --release --locked --bin meshcache"
    );
}
