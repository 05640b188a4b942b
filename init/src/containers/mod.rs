//! The config's containers, supervised by PID 1 itself (docs/containers.md).
//!
//! Each `[[containers]]` entry gets a task on PID 1's event loop that:
//! 1. waits for the containers it `depends_on` to be running (or, for
//!    one-shot ones, to have exited 0);
//! 2. gets its image ([`image`]): in the store, imported from the slot's
//!    preloaded images, or pulled by an `atoll-runtime pull` child, retried
//!    with backoff;
//! 3. starts it (blocking work on a worker thread: unpack, overlay, cgroup,
//!    fork; the reaper is held off while the runtime forks, so the exit
//!    status of the container's init comes back here);
//! 4. sends its stdout and stderr, line by line, to the log hub under the
//!    container's name;
//! 5. when it exits, restarts it by its policy (`no`, `on-failure` with an
//!    optional maximum, `always`) after an exponential backoff (0.5 s,
//!    doubling up to 60 s, back to 0.5 s after 10 s of running, as Docker);
//! 6. at shutdown (or `atollctl stop`), sends SIGTERM and, after
//!    [`STOP_GRACE`], SIGKILL to every process of its cgroup.
//!
//! The table of states is what `atollctl ps` shows.

pub mod exec;
pub mod health;
pub mod image;
pub mod images;
pub mod logs;
pub mod net;
pub mod pod;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atoll_common::api::{ContainerAction, ContainerState, ContainerStatus};
use atoll_common::config::userns::{self, IdRange};
use atoll_common::config::workload::{Container, NetworkMode, RestartPolicy};
use atoll_common::config::Config;
use atoll_common::layout;
use atoll_runtime::run::cgroup::Cgroup;
use atoll_runtime::run::process;
use atoll_runtime::store::Store;
use atoll_runtime::workload;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use self::image::{ImagePaths, Local};
use crate::stage2::reaper::{self, Exit, Pending};

/// SIGTERM to SIGKILL, at shutdown and on `stop` (Docker's default).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// First restart delay; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// The cgroup under which containers live.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/atoll";

/// The shared table `atollctl ps` reads.
pub type Table = Arc<Mutex<Vec<ContainerStatus>>>;

/// A `run` container's name and a receiver of its exit code (`None` when
/// the host shut down first).
pub type RunStarted = (String, oneshot::Receiver<Option<i32>>);

/// A request from the API.
#[derive(Debug)]
pub enum ActionRequest {
    /// Stop, start, restart: which container or pod, what, where to answer.
    Action(String, ContainerAction, oneshot::Sender<Result<(), String>>),
    /// Run a command in a container; the answers go to the sender (output,
    /// then the exit, or an error).
    Exec {
        name: String,
        args: Vec<String>,
        /// `None`: no limit (interactive).
        timeout: Option<Duration>,
        /// The client's stdin (and terminal), when interactive.
        io: Option<exec::ExecIo>,
        reply: mpsc::UnboundedSender<atoll_common::api::Response>,
    },
    /// `run`: the container's name and a receiver of its exit code (`None`
    /// when the host shut down first), or why it cannot run.
    Run(Box<Container>, oneshot::Sender<Result<RunStarted, String>>),
    /// `inspect`: answered with [`Response::Inspect`] or an error.
    Inspect(String, oneshot::Sender<atoll_common::api::Response>),
    /// `images`, `pull`, `rmi`, `prune`: answered with one response.
    Store(
        images::StoreRequest,
        oneshot::Sender<atoll_common::api::Response>,
    ),
}

/// Where the supervisor finds and keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    pub images: ImagePaths,
    /// Per-container state (overlay upper and work dirs).
    pub containers: PathBuf,
    pub cgroup_parent: PathBuf,
    /// Bind-mounted into containers with a network.
    pub resolv_conf: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            images: ImagePaths {
                store: PathBuf::from(layout::VAR_IMAGES),
                preloaded: PathBuf::from(layout::SLOT_PRELOADED_IMAGES),
                runtime: PathBuf::from(layout::SLOT_RUNTIME),
                config: PathBuf::from(crate::provision::apply::EFFECTIVE_CONFIG),
            },
            containers: PathBuf::from(layout::VAR_CONTAINERS),
            cgroup_parent: PathBuf::from(CGROUP_PARENT),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// Exponential restart backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn after_run(&mut self, ran: Duration) -> Duration {
        if ran >= BACKOFF_RESET {
            self.next = BACKOFF_MIN;
        }
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// Whether a container that exited with `code` starts again, after
/// `restarts` restarts so far.
pub fn should_restart(c: &Container, code: i32, restarts: u32) -> bool {
    match c.restart {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0 && c.max_retries.is_none_or(|max| restarts < max),
    }
}

/// The supervisor: one task per container.
#[derive(Debug)]
pub struct Supervisor {
    table: Table,
    /// By container name, pod name (all its containers) and `POD/NAME`.
    controls: std::cell::RefCell<BTreeMap<String, Vec<mpsc::UnboundedSender<Control>>>>,
    shutdown: watch::Sender<bool>,
    done: std::cell::RefCell<Vec<oneshot::Receiver<()>>>,
    targets: Targets,
    /// For the image requests: which images the config uses.
    config: Config,
    /// The admin container, when the config enables it.
    admin: Option<Container>,
    /// `atollctl run`'s containers, by name.
    adhoc: std::cell::RefCell<BTreeMap<String, Adhoc>>,
    net: Rc<net::NetSlot>,
    network: watch::Receiver<bool>,
    /// See [`HostReady::prepared`].
    prepared: watch::Receiver<bool>,
    paths: Rc<Paths>,
}

/// What the containers wait for from the host.
#[derive(Debug, Clone)]
pub struct HostReady {
    /// What every container and pod needs from the kernel: overlayfs's
    /// module loaded (or failed to) and cgroup2 mounted.
    pub prepared: watch::Receiver<bool>,
    /// The host's network is configured: a container with a network, or
    /// one whose image must be pulled, waits for it.
    pub network: watch::Receiver<bool>,
}

/// How a container waiting for [`HostReady::prepared`] shows it.
const PREPARED: &str = "the host's container support (overlayfs, cgroup2)";

/// A container started by `atollctl run`.
#[derive(Debug)]
struct Adhoc {
    /// Its row in the table.
    index: usize,
    spec: Container,
    running: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Stop,
    Start,
    Restart,
}

fn status_of(c: &Container) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        pod: None,
        image: c.image.clone(),
        image_digest: None,
        state: ContainerState::Waiting,
        detail: String::new(),
        pid: None,
        started_at: None,
        restarts: 0,
        exit_code: None,
        health: c.healthcheck.as_ref().map(|_| "starting".to_string()),
        network: match c.network {
            NetworkMode::Bridge => "bridge",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        }
        .to_string(),
        address: None,
        ports: c
            .ports
            .iter()
            .filter_map(|p| p.get().map(|p| p.to_string()))
            .collect(),
    }
}

impl Supervisor {
    /// Starts a task for each of `config`'s containers and pods (on the
    /// current LocalSet), filling `table`.
    pub fn start(
        config: &Config,
        paths: Paths,
        table: Table,
        modules: Option<Arc<crate::modules::ModuleDb>>,
        host: HostReady,
    ) -> Self {
        let HostReady { prepared, network } = host;
        let (shutdown, _) = watch::channel(false);
        // The admin container, when enabled, is supervised as one more.
        let admin = admin_container(config);
        let containers: Vec<Container> = config
            .containers
            .iter()
            .cloned()
            .chain(admin.clone())
            .collect();
        let mut rows: Vec<ContainerStatus> = containers.iter().map(status_of).collect();
        let mut pod_rows = Vec::new();
        for pod in &config.pods {
            let mut init = Vec::new();
            let mut main = Vec::new();
            for (i, c) in pod
                .init_containers
                .iter()
                .chain(&pod.containers)
                .enumerate()
            {
                let mut s = status_of(c);
                s.pod = Some(pod.name.clone());
                s.network = pod_network(pod).to_string();
                s.ports.clear();
                if i < pod.init_containers.len() {
                    init.push(rows.len());
                } else {
                    main.push(rows.len());
                }
                rows.push(s);
            }
            pod_rows.push((init, main));
        }
        *lock(&table) = rows;
        // Each container's and pod's "up" signal, for those that depend on it.
        let ups: BTreeMap<String, watch::Sender<bool>> = containers
            .iter()
            .map(|c| c.name.clone())
            .chain(config.pods.iter().map(|p| p.name.clone()))
            .map(|n| (n, watch::channel(false).0))
            .collect();
        let deps_of = |names: &[String]| -> Vec<(String, watch::Receiver<bool>)> {
            names
                .iter()
                .filter_map(|d| ups.get(d).map(|tx| (d.clone(), tx.subscribe())))
                .collect()
        };
        let paths = Rc::new(paths);
        // Host id ranges of the containers with a user namespace.
        let id_ranges = userns::ranges(&config.containers);
        let net = Rc::new(net::NetSlot::new(modules));
        let targets: Targets = Rc::default();
        let mut controls: BTreeMap<String, Vec<mpsc::UnboundedSender<Control>>> = BTreeMap::new();
        let mut done = Vec::new();
        for (index, c) in containers.iter().enumerate() {
            let mut deps = deps_of(&c.depends_on);
            deps.insert(0, (PREPARED.to_string(), prepared.clone()));
            let Some(up) = ups.get(&c.name).cloned() else {
                continue;
            };
            let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
            controls.entry(c.name.clone()).or_default().push(ctl_tx);
            let (done_tx, done_rx) = oneshot::channel();
            done.push(done_rx);
            let task = Task {
                index,
                id: c.name.clone(),
                sandbox: None,
                user_ids: id_ranges.get(&c.name).copied(),
                net: net.clone(),
                spec: c.clone(),
                paths: paths.clone(),
                table: table.clone(),
                up,
                shutdown: shutdown.subscribe(),
                control: ctl_rx,
                one_shot: false,
                targets: targets.clone(),
                health: None,
                mounts: if Some(c) == admin.as_ref() {
                    admin_mounts()
                } else {
                    Vec::new()
                },
                network: network.clone(),
            };
            tokio::task::spawn_local(async move {
                task.run(deps).await;
                let _ = done_tx.send(());
            });
        }
        for (pod, (init, main)) in config.pods.iter().zip(pod_rows) {
            let Some(up) = ups.get(&pod.name).cloned() else {
                continue;
            };
            // The pod's containers' dependencies, all waited for before its sandbox.
            let mut names: Vec<String> = Vec::new();
            for c in pod.init_containers.iter().chain(&pod.containers) {
                for d in &c.depends_on {
                    if ups.contains_key(d) && !names.contains(d) {
                        names.push(d.clone());
                    }
                }
            }
            let mut ctl_rxs = Vec::new();
            for c in &pod.containers {
                let (tx, rx) = mpsc::unbounded_channel();
                controls
                    .entry(pod.name.clone())
                    .or_default()
                    .push(tx.clone());
                controls
                    .entry(format!("{}/{}", pod.name, c.name))
                    .or_default()
                    .push(tx);
                ctl_rxs.push(rx);
            }
            let (done_tx, done_rx) = oneshot::channel();
            done.push(done_rx);
            let task = pod::PodTask {
                pod: pod.clone(),
                init_rows: init,
                main_rows: main,
                controls: ctl_rxs,
                paths: paths.clone(),
                net: net.clone(),
                table: table.clone(),
                up,
                shutdown: shutdown.clone(),
                targets: targets.clone(),
                network: network.clone(),
            };
            let mut deps = deps_of(&names);
            deps.insert(0, (PREPARED.to_string(), prepared.clone()));
            tokio::task::spawn_local(async move {
                task.run(deps).await;
                let _ = done_tx.send(());
            });
        }
        Self {
            table,
            controls: std::cell::RefCell::new(controls),
            shutdown,
            done: std::cell::RefCell::new(done),
            targets,
            config: config.clone(),
            admin,
            adhoc: std::cell::RefCell::default(),
            net,
            network,
            prepared,
            paths,
        }
    }

    /// The table `atollctl ps` reads.
    pub fn table(&self) -> Table {
        self.table.clone()
    }

    /// Carries out an API request.
    pub fn act(&self, name: &str, action: ContainerAction) -> Result<(), String> {
        let controls = self.controls.borrow();
        let txs = controls.get(name).ok_or_else(|| {
            let known: Vec<&str> = controls.keys().map(String::as_str).collect();
            format!(
                "no container or pod named {name:?} in the config (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        let control = match action {
            ContainerAction::Stop => Control::Stop,
            ContainerAction::Start => Control::Start,
            ContainerAction::Restart => Control::Restart,
        };
        for tx in txs {
            tx.send(control)
                .map_err(|_| format!("{name} is no longer supervised"))?;
        }
        Ok(())
    }

    /// Serves API requests until the channel closes.
    pub async fn serve_actions(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<ActionRequest>) {
        use atoll_common::api::Response;
        while let Some(req) = rx.recv().await {
            match req {
                ActionRequest::Action(name, action, reply) => {
                    let _ = reply.send(self.act(&name, action));
                }
                ActionRequest::Run(container, reply) => {
                    let _ = reply.send(self.run_adhoc(*container));
                }
                ActionRequest::Inspect(name, reply) => {
                    let _ = reply.send(match self.inspect(&name) {
                        Ok(i) => Response::Inspect(Box::new(i)),
                        Err(message) => Response::Error { message },
                    });
                }
                ActionRequest::Store(request, reply) => {
                    let images = self.paths.images.clone();
                    let config = self.config.clone();
                    let running: Vec<String> = lock(&self.table)
                        .iter()
                        .filter_map(|c| c.image_digest.clone())
                        .collect();
                    tokio::task::spawn_local(async move {
                        let answer = images::serve(request, images, config, running).await;
                        let _ = reply.send(answer);
                    });
                }
                ActionRequest::Exec {
                    name,
                    args,
                    timeout,
                    io,
                    reply,
                } => {
                    let id = name.replacen('/', ".", 1);
                    let target = self.targets.borrow().get(&id).cloned();
                    let Some(target) = target else {
                        let known = self.controls.borrow().contains_key(&name);
                        let message = if known {
                            format!("container {name} is not running")
                        } else {
                            format!("no container named {name:?} in the config")
                        };
                        let _ = reply.send(Response::Error { message });
                        continue;
                    };
                    let how = match &io {
                        Some(io) if io.tty => " (interactive, with a terminal)",
                        Some(_) => " (interactive)",
                        None => "",
                    };
                    log::info!("container {name}: exec {args:?}{how}");
                    tokio::task::spawn_local(async move {
                        let out = reply.clone();
                        let end = exec::run(&target, args, timeout, io, |stream, data| {
                            let _ = out.send(Response::ExecOutput {
                                stream: stream.to_string(),
                                data,
                            });
                        })
                        .await;
                        let last = match end {
                            Ok(exec::ExecEnd::Exited(code)) => Response::ExecExit {
                                code: Some(code),
                                timed_out: false,
                            },
                            Ok(exec::ExecEnd::TimedOut) => Response::ExecExit {
                                code: None,
                                timed_out: true,
                            },
                            Err(message) => Response::Error { message },
                        };
                        let _ = reply.send(last);
                    });
                }
            }
        }
    }

    /// `run`: starts `c` once, beside the config's containers, and hands
    /// back its name and its exit. Checked as a config entry; it may not
    /// take a name the config uses, nor one of a run still going.
    fn run_adhoc(self: &Rc<Self>, mut c: Container) -> Result<RunStarted, String> {
        if self.shutting_down() {
            return Err("the host is shutting down".into());
        }
        if c.name.is_empty() {
            c.name = adhoc_name();
        }
        if !c.depends_on.is_empty() {
            return Err("a container started by run cannot depend on others".into());
        }
        // Never restarted: it runs once.
        c.restart = RestartPolicy::No;
        c.max_retries = None;
        check_adhoc(&c)?;
        let name = c.name.clone();
        // Its user namespace's range, among the config's containers' ranges.
        let user_ids = if c.user_namespace.is_off() {
            None
        } else {
            let mut all = self.config.containers.clone();
            all.retain(|x| x.name != name);
            all.push(c.clone());
            let ids = userns::ranges(&all).get(&name).copied();
            if ids.is_none() {
                return Err(
                    "user_namespace: its range overlaps one of the config's containers".into(),
                );
            }
            ids
        };
        let mut adhoc = self.adhoc.borrow_mut();
        if adhoc.get(&name).is_some_and(|a| a.running) {
            return Err(format!("{name} is already running (atollctl stop {name})"));
        }
        // (The controls hold the running runs' names too.)
        let in_config = !adhoc.contains_key(&name) && self.controls.borrow().contains_key(&name)
            || self.admin.as_ref().is_some_and(|a| a.name == name);
        if in_config {
            return Err(format!("{name} is a container or pod of the config"));
        }
        // A name used before takes its old row again.
        let index = {
            let mut table = lock(&self.table);
            match adhoc.get(&name) {
                Some(a) => {
                    if let Some(row) = table.get_mut(a.index) {
                        *row = status_of(&c);
                    }
                    a.index
                }
                None => {
                    table.push(status_of(&c));
                    table.len() - 1
                }
            }
        };
        adhoc.insert(
            name.clone(),
            Adhoc {
                index,
                spec: c.clone(),
                running: true,
            },
        );
        drop(adhoc);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        self.controls
            .borrow_mut()
            .insert(name.clone(), vec![ctl_tx]);
        let task = Task {
            index,
            id: name.clone(),
            sandbox: None,
            user_ids,
            net: self.net.clone(),
            spec: c,
            paths: self.paths.clone(),
            table: self.table.clone(),
            up: watch::channel(false).0,
            shutdown: self.shutdown.subscribe(),
            control: ctl_rx,
            one_shot: true,
            targets: self.targets.clone(),
            health: None,
            mounts: Vec::new(),
            network: self.network.clone(),
        };
        let (done_tx, done_rx) = oneshot::channel();
        self.done.borrow_mut().push(done_rx);
        let (exit_tx, exit_rx) = oneshot::channel();
        let this = Rc::clone(self);
        let id = name.clone();
        let prepared = vec![(PREPARED.to_string(), self.prepared.clone())];
        log::info!("container {name}: started by atollctl run");
        tokio::task::spawn_local(async move {
            let code = task.run(prepared).await;
            // Its writable layer goes with it (as docker run --rm).
            let dir = this.paths.containers.join(&id);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            this.controls.borrow_mut().remove(&id);
            if let Some(a) = this.adhoc.borrow_mut().get_mut(&id) {
                a.running = false;
            }
            let _ = exit_tx.send(code);
            let _ = done_tx.send(());
        });
        Ok((name, exit_rx))
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// `inspect`: the config entry, the state and the runtime spec of a
    /// container (`NAME`, `POD/NAME`) or of a pod's containers (`POD`).
    pub fn inspect(&self, name: &str) -> Result<atoll_common::api::Inspection, String> {
        fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
            // The config's types serialize to JSON as they parse from TOML.
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
        }
        let (kind, entry, members): (&str, serde_json::Value, Vec<(Option<&str>, &str)>) =
            if let Some(c) = self
                .config
                .containers
                .iter()
                .chain(self.admin.as_ref())
                .find(|c| c.name == name)
            {
                ("container", to_json(c), vec![(None, c.name.as_str())])
            } else if let Some(p) = self.config.pods.iter().find(|p| p.name == name) {
                let members = p
                    .init_containers
                    .iter()
                    .chain(&p.containers)
                    .map(|c| (Some(p.name.as_str()), c.name.as_str()))
                    .collect();
                ("pod", to_json(p), members)
            } else if let Some((p, c)) = name.split_once('/').and_then(|(pod, c)| {
                let p = self.config.pods.iter().find(|p| p.name == pod)?;
                let c = p
                    .init_containers
                    .iter()
                    .chain(&p.containers)
                    .find(|x| x.name == c)?;
                Some((p, c))
            }) {
                (
                    "container",
                    to_json(c),
                    vec![(Some(p.name.as_str()), c.name.as_str())],
                )
            } else if let Some(a) = self.adhoc.borrow().get(name) {
                ("container", to_json(&a.spec), vec![(None, name)])
            } else {
                let controls = self.controls.borrow();
                let known: Vec<&str> = controls.keys().map(String::as_str).collect();
                return Err(format!(
                    "no container or pod named {name:?} in the config (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
        let table = lock(&self.table);
        let containers = members
            .iter()
            .filter_map(|(pod, c)| {
                table
                    .iter()
                    .find(|s| s.pod.as_deref() == *pod && s.name == *c)
                    .cloned()
            })
            .collect();
        let targets = self.targets.borrow();
        let specs = members
            .iter()
            .filter_map(|(pod, c)| {
                let id = pod.map_or_else(|| c.to_string(), |p| format!("{p}.{c}"));
                let label = pod.map_or_else(|| c.to_string(), |p| format!("{p}/{c}"));
                let spec = serde_json::to_value(&targets.get(&id)?.spec).ok()?;
                Some((label, spec))
            })
            .collect();
        Ok(atoll_common::api::Inspection {
            name: name.to_string(),
            kind: kind.to_string(),
            containers,
            config: entry,
            specs,
        })
    }

    /// For the boot assessment of a trial boot: waits until every container
    /// with a healthcheck is healthy. `Err` names those that are not when
    /// one turns unhealthy or `deadline` passes.
    pub async fn wait_healthy(&self, deadline: Duration) -> Result<(), String> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let (pending, unhealthy): (Vec<String>, Vec<String>) = {
                let t = lock(&self.table);
                let checked: Vec<&ContainerStatus> =
                    t.iter().filter(|s| s.health.is_some()).collect();
                (
                    checked
                        .iter()
                        .filter(|s| s.health.as_deref() != Some("healthy"))
                        .map(|s| format!("{} ({})", s.name, s.health.as_deref().unwrap_or("")))
                        .collect(),
                    checked
                        .iter()
                        .filter(|s| s.health.as_deref() == Some("unhealthy"))
                        .map(|s| s.name.clone())
                        .collect(),
                )
            };
            if pending.is_empty() {
                return Ok(());
            }
            if !unhealthy.is_empty() {
                return Err(format!("unhealthy: {}", unhealthy.join(", ")));
            }
            if tokio::time::Instant::now() >= end {
                return Err(format!(
                    "not healthy after {} s: {}",
                    deadline.as_secs(),
                    pending.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops every container (SIGTERM, SIGKILL after the grace period) and
    /// waits for their tasks to end.
    pub async fn stop_all(&self) {
        let _ = self.shutdown.send(true);
        let done: Vec<_> = self.done.borrow_mut().drain(..).collect();
        for d in done {
            let _ = d.await;
        }
    }
}

/// Checks a `run` container's entry as the config's entries are checked
/// (an empty name stands for one to be made up); the problems in a line.
pub fn check_adhoc(c: &Container) -> Result<(), String> {
    let mut check = Config::default();
    let mut c = c.clone();
    if c.name.is_empty() {
        c.name = "run".into();
    }
    check.containers.push(c);
    check.validate().map_err(|errors| {
        let text: Vec<String> = errors
            .iter()
            .map(|e| e.to_string().replacen("containers[0].", "", 1))
            .collect();
        text.join("; ")
    })
}

/// A name for a `run` container that was given none: `run-` and six
/// hex digits from the clock.
fn adhoc_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("run-{:06x}", (nanos >> 10) & 0xff_ffff)
}

/// The admin container's name.
pub const ADMIN_NAME: &str = "admin";

/// `[admin]` as a container: privileged, in the host's network, restarted
/// always; the host API socket, the admin SSH keys and `atollctl` mounted
/// in, its home (`/root`) on the named volume `admin-home`.
fn admin_container(config: &Config) -> Option<Container> {
    let a = &config.admin;
    let image = a.image.clone().filter(|_| a.enabled)?;
    if config.containers.iter().any(|c| c.name == ADMIN_NAME)
        || config.pods.iter().any(|p| p.name == ADMIN_NAME)
    {
        log::error!(
            "[admin] is enabled but a container or pod is already named {ADMIN_NAME:?}: \
             the admin container does not run"
        );
        return None;
    }
    Some(Container {
        name: ADMIN_NAME.into(),
        image,
        network: NetworkMode::Host,
        privileged: true,
        restart: RestartPolicy::Always,
        volumes: vec![atoll_common::config::value::Parsed::new("admin-home:/root")],
        ..Container::default()
    })
}

/// What the admin container gets from the host.
fn admin_mounts() -> Vec<atoll_runtime::run::spec::Mount> {
    use atoll_runtime::run::spec::Mount;
    use std::path::Path;
    let keys = Path::new(crate::provision::apply::ADMIN_KEYS);
    let mut m = vec![
        Mount::bind(
            Path::new(layout::API_SOCKET),
            Path::new(layout::API_SOCKET),
            false,
        ),
        Mount::bind(
            Path::new(layout::SLOT_ATOLLCTL),
            Path::new("/usr/local/bin/atollctl"),
            true,
        ),
    ];
    // Written by the config step when [admin] lists keys.
    if keys.exists() {
        m.push(Mount::bind(keys, keys, true));
    } else {
        log::warn!("[admin] lists no ssh_authorized_keys: the admin container gets none");
    }
    m
}

/// The network a pod's containers share.
fn pod_network(pod: &atoll_common::config::workload::Pod) -> &'static str {
    match pod.network {
        NetworkMode::Bridge => "bridge",
        NetworkMode::Host => "host",
        NetworkMode::None => "none",
    }
}

/// One container's supervision.
pub(crate) struct Task {
    pub(crate) index: usize,
    /// See [`Launch::id`].
    pub(crate) id: String,
    /// The pod sandbox to join.
    pub(crate) sandbox: Option<SandboxRef>,
    /// See [`Launch::user_ids`].
    pub(crate) user_ids: Option<IdRange>,
    pub(crate) net: Rc<net::NetSlot>,
    pub(crate) spec: Container,
    pub(crate) paths: Rc<Paths>,
    pub(crate) table: Table,
    pub(crate) up: watch::Sender<bool>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    /// Run once (a pod's init container): return after the first exit.
    pub(crate) one_shot: bool,
    /// Running containers, for exec.
    pub(crate) targets: Targets,
    /// The healthcheck loop of the current run.
    pub(crate) health: Option<tokio::task::JoinHandle<()>>,
    /// See [`Launch::mounts`].
    pub(crate) mounts: Vec<atoll_runtime::run::spec::Mount>,
    /// Whether the host's network is configured: a container with a
    /// network, or one whose image must be pulled, waits for it.
    pub(crate) network: watch::Receiver<bool>,
}

/// Running containers by id (and name), for exec.
pub(crate) type Targets = Rc<std::cell::RefCell<BTreeMap<String, exec::ExecTarget>>>;

/// A started container.
struct Running {
    pending: Pending,
    pid: u32,
    cgroup: Cgroup,
    started: Instant,
    /// Its place on the bridge, removed when it ends.
    attachment: Option<(
        Arc<atoll_runtime::network::Bridge>,
        atoll_runtime::network::Attachment,
    )>,
}

/// How a run ended.
enum Ended {
    Exited(Exit),
    /// Stopped on request (`stop`), or `restart`; the exit code if it
    /// came.
    Stopped {
        restart: bool,
        code: Option<i32>,
    },
    Shutdown,
}

fn lock(t: &Table) -> std::sync::MutexGuard<'_, Vec<ContainerStatus>> {
    match t.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn exit_code(e: Exit) -> i32 {
    match e {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}

impl Task {
    fn set(&self, f: impl FnOnce(&mut ContainerStatus)) {
        if let Some(s) = lock(&self.table).get_mut(self.index) {
            f(s);
        }
    }

    fn state(&self, state: ContainerState, detail: impl Into<String>) {
        let detail = detail.into();
        self.set(|s| {
            s.state = state;
            s.detail = detail;
        });
    }

    fn name(&self) -> &str {
        &self.id
    }

    /// Resolves when shutdown starts (holds no borrow of `self`).
    fn until_shutdown(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleeps for `d`; false if shutdown came first.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.until_shutdown() => false,
        }
    }

    /// Supervises until shutdown (`None`), or, for a one-shot task, until
    /// its first exit (its exit code).
    pub(crate) async fn run(
        mut self,
        mut deps: Vec<(String, watch::Receiver<bool>)>,
    ) -> Option<i32> {
        // 1. Dependencies: the host's network first for a container with
        // one (a pod waits for it itself); `network = "none"` ones with a
        // local image start while the network is still coming up.
        if self.spec.network != NetworkMode::None && self.sandbox.is_none() {
            deps.insert(0, ("the network".to_string(), self.network.clone()));
        }
        for (dep, mut rx) in deps {
            self.state(ContainerState::Waiting, format!("waiting for {dep}"));
            tokio::select! {
                _ = rx.wait_for(|up| *up) => {}
                _ = self.until_shutdown() => return self.final_state(),
            }
        }
        // 2. The image.
        let mut backoff = Backoff::default();
        loop {
            self.state(ContainerState::Pulling, "");
            match self.get_image().await {
                Ok(()) => break,
                // Given up waiting for the network to pull: not an error.
                Err(_) if self.shutting_down() => return self.final_state(),
                Err(e) => {
                    let d = backoff.after_run(Duration::ZERO);
                    log::error!("container {}: {e}; trying again in {d:?}", self.name());
                    self.state(
                        ContainerState::Pulling,
                        format!("{e}; trying again in {d:?}"),
                    );
                    if !self.sleep(d).await {
                        return self.final_state();
                    }
                }
            }
        }
        // 3. Run, restart, stop.
        let mut backoff = Backoff::default();
        loop {
            if self.shutting_down() {
                return self.final_state();
            }
            self.state(ContainerState::Starting, "");
            let (code, ran) = match self.start().await {
                Ok(running) => {
                    let started = running.started;
                    match self.watch(running).await {
                        Ended::Shutdown => return self.final_state(),
                        Ended::Stopped { restart: true, .. } => {
                            backoff = Backoff::default();
                            continue;
                        }
                        // A one-shot run ends there (`atollctl run`'s).
                        Ended::Stopped {
                            restart: false,
                            code,
                        } if self.one_shot => {
                            let _ = self.up.send(false);
                            self.set(|s| s.exit_code = code);
                            return code;
                        }
                        Ended::Stopped { restart: false, .. } => {
                            if !self.wait_for_start().await {
                                return self.final_state();
                            }
                            backoff = Backoff::default();
                            continue;
                        }
                        Ended::Exited(exit) => (exit_code(exit), started.elapsed()),
                    }
                }
                Err(e) => {
                    log::error!("container {}: {e}", self.name());
                    self.set(|s| s.detail = e.clone());
                    (127, Duration::ZERO)
                }
            };
            let restarts = lock(&self.table).get(self.index).map_or(0, |s| s.restarts);
            let how = if code > 128 {
                format!("killed by signal {}", code - 128)
            } else {
                format!("exit status {code}")
            };
            if !should_restart(&self.spec, code, restarts) {
                let gave_up = self.spec.restart == RestartPolicy::OnFailure && code != 0;
                let (state, detail) = if gave_up {
                    (
                        ContainerState::Failed,
                        format!("{how}; gave up after {restarts} restarts"),
                    )
                } else {
                    (ContainerState::Exited, how.clone())
                };
                log::info!("container {}: {detail}", self.name());
                let _ = self.up.send(code == 0);
                if self.one_shot {
                    self.set(|s| {
                        s.state = state;
                        s.detail = detail.clone();
                        s.exit_code = Some(code);
                        s.pid = None;
                    });
                    return Some(code);
                }
                self.set(|s| {
                    s.state = state;
                    if s.detail.is_empty() || code != 127 {
                        s.detail = detail;
                    }
                    s.exit_code = Some(code);
                    s.pid = None;
                });
                if !self.wait_for_start().await {
                    return self.final_state();
                }
                backoff = Backoff::default();
                continue;
            }
            let d = backoff.after_run(ran);
            log::warn!(
                "container {}: {how}; restarting in {} ms",
                self.name(),
                d.as_millis()
            );
            self.set(|s| {
                s.state = ContainerState::Restarting;
                let why = if code == 127 && !s.detail.is_empty() && s.pid.is_none() {
                    s.detail.clone()
                } else {
                    how.clone()
                };
                s.detail = format!("{why}; restarting in {} ms", d.as_millis());
                s.exit_code = Some(code);
                s.restarts += 1;
                s.pid = None;
            });
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = self.until_shutdown() => return self.final_state(),
                c = self.next_control() => {
                    // `start`/`restart` during the backoff start it now.
                    if c == Control::Stop {
                        self.state(ContainerState::Stopped, "stopped on request");
                        if !self.wait_for_start().await {
                            return self.final_state();
                        }
                    }
                }
            }
        }
    }

    /// The next control request; never resolves once nobody can send one.
    async fn next_control(&mut self) -> Control {
        match self.control.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    /// After an exit or a stop: waits for `start`/`restart` (true) or
    /// shutdown (false).
    async fn wait_for_start(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.until_shutdown() => return false,
                c = self.next_control() => if c != Control::Stop {
                    return true;
                }
            }
        }
    }

    fn final_state(&self) -> Option<i32> {
        self.set(|s| {
            if matches!(
                s.state,
                ContainerState::Running
                    | ContainerState::Starting
                    | ContainerState::Restarting
                    | ContainerState::Pulling
                    | ContainerState::Waiting
            ) {
                s.state = ContainerState::Stopped;
                s.detail = "host shutting down".into();
            }
            s.pid = None;
        });
        None
    }

    async fn get_image(&mut self) -> Result<(), String> {
        let paths = self.paths.images.clone();
        let image = self.spec.image.clone();
        let found = tokio::task::spawn_blocking(move || image::local(&paths, &image))
            .await
            .map_err(|e| format!("image lookup: {e}"))??;
        match found {
            Local::Present => Ok(()),
            Local::Imported => {
                log::info!(
                    "container {}: image {} imported from the preloaded images",
                    self.name(),
                    self.spec.image
                );
                Ok(())
            }
            Local::Missing => {
                if !*self.network.borrow() {
                    self.state(
                        ContainerState::Waiting,
                        format!("waiting for the network to pull {}", self.spec.image),
                    );
                    let mut rx = self.network.clone();
                    tokio::select! {
                        _ = rx.wait_for(|up| *up) => {}
                        _ = self.until_shutdown() => return Err("host shutting down".into()),
                    }
                }
                log::info!("container {}: pulling {}", self.name(), self.spec.image);
                self.state(
                    ContainerState::Pulling,
                    format!("pulling {}", self.spec.image),
                );
                let who = format!("container {}", self.name());
                image::pull(&self.paths.images, &self.spec.image, &who)
                    .await
                    .map(|_| ())
            }
        }
    }

    async fn start(&mut self) -> Result<Running, String> {
        let mut launch = Launch {
            id: self.id.clone(),
            sandbox: self.sandbox.clone(),
            user_ids: self.user_ids,
            bridge: None,
            mounts: self.mounts.clone(),
            verified: None,
        };
        if let Some(key) = &self.spec.signature_key {
            let digest = image::verify(
                &self.paths.images,
                &self.spec.image,
                key.text(),
                self.name(),
            )
            .await?;
            launch.verified = Some(digest);
        }
        if self.sandbox.is_none() && self.spec.network == NetworkMode::Bridge {
            launch.bridge = Some(self.net.bridge().await?);
        }
        let spec = self.spec.clone();
        let paths = self.paths.as_ref().clone();
        let started = tokio::task::spawn_blocking(move || start_blocking(&spec, &paths, &launch))
            .await
            .map_err(|e| format!("start: {e}"))??;
        let (running, digest, out, err, spec) = started;
        let target = exec::ExecTarget {
            pid: running.pid,
            spec,
            cgroup_parent: self.paths.cgroup_parent.clone(),
            cgroup_name: self.id.clone(),
        };
        self.targets
            .borrow_mut()
            .insert(self.id.clone(), target.clone());
        if let Some(hc) = &self.spec.healthcheck {
            let cfg = atoll_runtime::health::HealthConfig::from(hc);
            let args = hc.command.clone();
            let table = self.table.clone();
            let index = self.index;
            let id = self.id.clone();
            let h = tokio::task::spawn_local(health::watch(id, target, cfg, args, table, index));
            self.health = Some(h);
        }
        let pid = running.pid;
        let address = running
            .attachment
            .as_ref()
            .map(|(_, a)| a.address.to_string());
        if address.is_some() {
            self.set(|s| s.address = address);
        }
        log::info!(
            "container {}: started ({}, pid {pid})",
            self.name(),
            self.spec.image
        );
        self.set(|s| {
            s.state = ContainerState::Running;
            s.detail = String::new();
            s.pid = Some(pid);
            s.image_digest = Some(digest);
            s.started_at = Some(crate::clock::format_unix(crate::clock::unix_now()));
            s.exit_code = None;
        });
        let _ = self.up.send(true);
        logs::forward(self.name(), pid, out, "stdout");
        logs::forward(self.name(), pid, err, "stderr");
        Ok(running)
    }

    /// Waits for the container to exit, a control request, or shutdown.
    async fn watch(&mut self, running: Running) -> Ended {
        let Running {
            pending,
            pid,
            cgroup,
            attachment,
            ..
        } = running;
        let mut exit = Box::pin(pending.wait());
        let ended = loop {
            tokio::select! {
                e = &mut exit => break Ended::Exited(e.unwrap_or(Exit::Signal(9))),
                _ = self.until_shutdown() => {
                    stop(self.name(), pid, &cgroup, &mut exit).await;
                    break Ended::Shutdown;
                }
                c = self.next_control() => match c {
                    Control::Stop => {
                        self.state(ContainerState::Running, "stopping");
                        let code = stop(self.name(), pid, &cgroup, &mut exit).await;
                        self.set(|s| {
                            s.state = ContainerState::Stopped;
                            s.detail = "stopped on request".into();
                            s.pid = None;
                        });
                        break Ended::Stopped {
                            restart: false,
                            code: code.map(exit_code),
                        };
                    }
                    Control::Restart => {
                        self.state(ContainerState::Running, "restarting");
                        stop(self.name(), pid, &cgroup, &mut exit).await;
                        break Ended::Stopped {
                            restart: true,
                            code: None,
                        };
                    }
                    Control::Start => {}
                }
            }
        };
        let name = self.name().to_string();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroup.remove() {
                log::warn!("container {name}: removing its cgroup: {e}");
            }
            if let Some((bridge, a)) = attachment {
                if let Err(e) = bridge.detach(&a) {
                    log::warn!("container {name}: leaving the bridge: {e}");
                }
            }
        })
        .await;
        self.set(|s| s.address = None);
        self.targets.borrow_mut().remove(&self.id);
        if let Some(h) = self.health.take() {
            h.abort();
        }
        ended
    }
}

/// SIGTERM to the container's init; SIGKILL to its whole cgroup after
/// [`STOP_GRACE`]; then waits for the exit (returned, if it came).
async fn stop<F>(
    name: &str,
    pid: u32,
    cgroup: &Cgroup,
    exit: &mut std::pin::Pin<Box<F>>,
) -> Option<Exit>
where
    F: std::future::Future<Output = Option<Exit>>,
{
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    if let Ok(e) = tokio::time::timeout(STOP_GRACE, exit.as_mut()).await {
        log::info!("container {name}: stopped");
        return e;
    }
    log::warn!(
        "container {name}: still running {} s after SIGTERM; killing it",
        STOP_GRACE.as_secs()
    );
    if std::fs::write(cgroup.path().join("cgroup.kill"), "1").is_err() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    match tokio::time::timeout(Duration::from_secs(5), exit.as_mut()).await {
        Ok(e) => {
            log::info!("container {name}: killed");
            e
        }
        Err(_) => {
            log::error!("container {name}: still not gone 5 s after SIGKILL");
            None
        }
    }
}

/// A pod sandbox, for its containers to join.
#[derive(Debug, Clone)]
pub(crate) struct SandboxRef {
    pub pid: i32,
    /// The pod uses the host's network.
    pub host_network: bool,
    /// The pod's hostname (its name).
    pub hostname: String,
}

/// How a container is launched, beyond its config entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// Unique: its cgroup's and state directory's name, and its log name
    /// (`NAME`, or `POD.NAME` for a pod's container).
    pub id: String,
    /// Join this pod sandbox's namespaces.
    pub sandbox: Option<SandboxRef>,
    /// The host id range of its user namespace, when it has one.
    pub user_ids: Option<IdRange>,
    /// Connect its own network namespace to this bridge.
    pub bridge: Option<Arc<atoll_runtime::network::Bridge>>,
    /// Host paths mounted in besides its volumes (the admin container's).
    pub mounts: Vec<atoll_runtime::run::spec::Mount>,
    /// The manifest digest whose signature was checked: the image must
    /// still be that one.
    pub verified: Option<String>,
}

/// A started container, its digest, and the read ends of its stdout and stderr.
type Started = (
    Running,
    String,
    std::os::fd::OwnedFd,
    std::os::fd::OwnedFd,
    atoll_runtime::run::spec::Spec,
);

/// Prepares and forks the container (blocking). A bridged container's
/// init waits on its exec FIFO until its network is attached.
fn start_blocking(c: &Container, paths: &Paths, launch: &Launch) -> Result<Started, String> {
    let store = Store::open(&paths.images.store).map_err(|e| format!("image store: {e}"))?;
    let state_dir = paths.containers.join(&launch.id);
    let mut prepared = workload::prepare(
        &store,
        c,
        launch.user_ids,
        &state_dir,
        Some(&paths.resolv_conf),
    )
    .map_err(|e| e.to_string())?;
    if let Some(verified) = &launch.verified {
        if *verified != prepared.image_digest {
            return Err(format!(
                "the image changed after its signature was checked ({verified}, now {})",
                prepared.image_digest
            ));
        }
    }
    if let Some(sb) = &launch.sandbox {
        atoll_runtime::run::sandbox::join(
            &mut prepared.spec,
            sb.pid,
            sb.host_network,
            &sb.hostname,
        );
    }
    prepared.spec.mounts.extend(launch.mounts.iter().cloned());
    // A cgroup left by an earlier run of this container (its processes are gone).
    let stale = paths.cgroup_parent.join(&launch.id);
    if stale.exists() {
        let _ = std::fs::remove_dir(&stale);
    }
    let cgroup = Cgroup::create(&paths.cgroup_parent, &launch.id, &prepared.resources)
        .map_err(|e| format!("cgroup: {e}"))?;
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let stdio = process::Stdio {
        stdin: Some(null.into()),
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    let options = process::StartOptions {
        exec_fifo: match &launch.bridge {
            Some(_) => Some(net::exec_fifo(&state_dir)?),
            None => None,
        },
        controlling_terminal: false,
    };
    let result = reaper::start_with(|| {
        process::start_with(
            &prepared.spec,
            &prepared.rootfs,
            Some(&cgroup),
            stdio,
            options,
        )
        .map(|c| c.pid())
    });
    let pending = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = cgroup.remove();
            return Err(e.to_string());
        }
    };
    let pid = pending.pid;
    let mut attachment = None;
    if let Some(bridge) = &launch.bridge {
        let ports: Vec<_> = c.ports.iter().filter_map(|p| p.get().copied()).collect();
        let attached = bridge
            .attach(&launch.id, pid as i32, &ports)
            .map_err(|e| format!("network: {e}"))
            .and_then(|a| match net::release(&state_dir, pid) {
                Ok(()) => Ok(a),
                Err(e) => {
                    let _ = bridge.detach(&a);
                    Err(e)
                }
            });
        match attached {
            Ok(a) => attachment = Some((bridge.clone(), a)),
            Err(e) => {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = cgroup.remove();
                return Err(e);
            }
        }
    }
    Ok((
        Running {
            pid,
            pending,
            cgroup,
            started: Instant::now(),
            attachment,
        },
        prepared.image_digest,
        out_r,
        err_r,
        prepared.spec,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let got: Vec<u128> = (0..10).map(|_| b.after_run(short).as_millis()).collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert_eq!(b.after_run(BACKOFF_RESET), BACKOFF_MIN);
        assert_eq!(b.after_run(short), BACKOFF_MIN * 2);
    }

    #[test]
    fn restart_policies() {
        let mut c = Container {
            restart: RestartPolicy::No,
            ..Container::default()
        };
        assert!(!should_restart(&c, 1, 0));
        c.restart = RestartPolicy::Always;
        assert!(should_restart(&c, 0, 100));
        c.restart = RestartPolicy::OnFailure;
        assert!(!should_restart(&c, 0, 0));
        assert!(should_restart(&c, 1, 1000));
        c.max_retries = Some(2);
        assert!(should_restart(&c, 1, 1));
        assert!(!should_restart(&c, 1, 2));
    }
}
