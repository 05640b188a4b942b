//! A pod: a sandbox process holding the network, IPC and UTS namespaces
//! its containers share ([`atoll_runtime::run::sandbox`]), connected to the
//! bridge with the pod's published ports; its init containers run one
//! after the other, each to exit status 0, and then its containers start
//! together, each restarted by the pod's policy. At shutdown (or `stop POD`)
//! the containers stop, then the sandbox goes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use atoll_common::api::ContainerState;
use atoll_common::config::workload::{NetworkMode, Pod, RestartPolicy};
use atoll_runtime::network::{Attachment, Bridge};
use atoll_runtime::run::sandbox;
use tokio::sync::{mpsc, oneshot, watch};

use super::net::NetSlot;
use super::{lock, Backoff, Control, Paths, Table, Task};
use crate::stage2::reaper::{self, Pending};

/// One pod's supervision.
pub(crate) struct PodTask {
    pub pod: Pod,
    /// Rows of the table: its init containers', then its containers'.
    pub init_rows: Vec<usize>,
    pub main_rows: Vec<usize>,
    /// One per container (not init containers), in order.
    pub controls: Vec<mpsc::UnboundedReceiver<Control>>,
    pub paths: Rc<Paths>,
    pub net: Rc<NetSlot>,
    pub table: Table,
    pub up: watch::Sender<bool>,
    pub shutdown: watch::Sender<bool>,
    pub targets: super::Targets,
    /// Whether the host's network is configured.
    pub network: watch::Receiver<bool>,
}

/// The sandbox and what it holds.
struct Sandbox {
    pid: i32,
    pending: Pending,
    attachment: Option<(Arc<Bridge>, Attachment)>,
}

impl PodTask {
    fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.init_rows.iter().chain(&self.main_rows).copied()
    }

    fn set_all(&self, state: ContainerState, detail: &str) {
        let mut t = lock(&self.table);
        for i in self.rows() {
            if let Some(s) = t.get_mut(i) {
                s.state = state;
                s.detail = detail.to_string();
            }
        }
    }

    fn until_shutdown(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn is_shutdown(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn task(&self, index: usize, container: usize, sandbox: &Sandbox, init: bool) -> Task {
        let host = self.pod.network == NetworkMode::Host;
        let mut spec = if init {
            self.pod.init_containers[container].clone()
        } else {
            self.pod.containers[container].clone()
        };
        spec.restart = if init {
            RestartPolicy::No
        } else {
            self.pod.restart
        };
        spec.max_retries = self.pod.max_retries;
        // The pod's namespaces decide; the container's own network setting
        // is not used.
        spec.network = self.pod.network;
        Task {
            index,
            id: format!("{}.{}", self.pod.name, spec.name),
            sandbox: Some(super::SandboxRef {
                pid: sandbox.pid,
                host_network: host,
                hostname: self.pod.name.clone(),
            }),
            // Refused for a pod's containers (config validation).
            user_ids: None,
            net: self.net.clone(),
            spec,
            paths: self.paths.clone(),
            table: self.table.clone(),
            up: watch::channel(false).0,
            shutdown: self.shutdown.subscribe(),
            control: mpsc::unbounded_channel().1,
            one_shot: init,
            targets: self.targets.clone(),
            health: None,
            mounts: Vec::new(),
            network: self.network.clone(),
        }
    }

    async fn create_sandbox(&self) -> Result<Sandbox, String> {
        let name = self.pod.name.clone();
        let host = self.pod.network == NetworkMode::Host;
        let pending = tokio::task::spawn_blocking(move || {
            reaper::start_with(|| sandbox::create(&name, host))
        })
        .await
        .map_err(|e| format!("pod sandbox: {e}"))?
        .map_err(|e| e.to_string())?;
        let pid = pending.pid as i32;
        let mut sb = Sandbox {
            pid,
            pending,
            attachment: None,
        };
        if self.pod.network == NetworkMode::Bridge {
            let bridge = match self.net.bridge().await {
                Ok(b) => b,
                Err(e) => {
                    destroy(sb).await;
                    return Err(e);
                }
            };
            let ports: Vec<_> = self
                .pod
                .ports
                .iter()
                .filter_map(|p| p.get().copied())
                .collect();
            let id = format!("pod.{}", self.pod.name);
            let b = bridge.clone();
            let attached = tokio::task::spawn_blocking(move || b.attach(&id, pid, &ports)).await;
            match attached {
                Ok(Ok(a)) => {
                    let address = a.address.to_string();
                    let mut t = lock(&self.table);
                    for i in self.rows() {
                        if let Some(s) = t.get_mut(i) {
                            s.address = Some(address.clone());
                        }
                    }
                    for i in &self.main_rows {
                        if let (Some(s), Some(p)) = (t.get_mut(*i), Some(&self.pod.ports)) {
                            s.ports = p
                                .iter()
                                .filter_map(|p| p.get().map(|p| p.to_string()))
                                .collect();
                        }
                    }
                    sb.attachment = Some((bridge, a));
                }
                Ok(Err(e)) => {
                    destroy(sb).await;
                    return Err(format!("network: {e}"));
                }
                Err(e) => {
                    destroy(sb).await;
                    return Err(format!("network: {e}"));
                }
            }
        }
        Ok(sb)
    }

    /// Runs the init containers in order; `Err(name, code)` for the first
    /// that fails, `Ok(false)` on shutdown.
    async fn run_init(&self, sb: &Sandbox) -> Result<bool, (String, i32)> {
        for (n, index) in self.init_rows.iter().enumerate() {
            let task = self.task(*index, n, sb, true);
            let name = task.spec.name.clone();
            match task.run(Vec::new()).await {
                None => return Ok(false),
                Some(0) => {}
                Some(code) => return Err((name, code)),
            }
        }
        Ok(true)
    }

    pub(crate) async fn run(mut self, mut deps: Vec<(String, watch::Receiver<bool>)>) {
        // A pod with a network starts once the host's is configured.
        if self.pod.network != NetworkMode::None {
            deps.insert(0, ("the network".to_string(), self.network.clone()));
        }
        for (dep, mut rx) in deps {
            self.set_all(ContainerState::Waiting, &format!("waiting for {dep}"));
            let mut sd = self.shutdown.subscribe();
            tokio::select! {
                _ = rx.wait_for(|up| *up) => {}
                _ = sd.wait_for(|s| *s) => {
                    self.set_all(ContainerState::Stopped, "host shutting down");
                    return;
                }
            }
        }
        let mut backoff = Backoff::default();
        let sb = loop {
            self.set_all(ContainerState::Starting, "creating the pod sandbox");
            match self.create_sandbox().await {
                Ok(sb) => break sb,
                Err(e) => {
                    let d = backoff.after_run(Duration::ZERO);
                    log::error!("pod {}: {e}; trying again in {d:?}", self.pod.name);
                    self.set_all(
                        ContainerState::Failed,
                        &format!("{e}; trying again in {d:?}"),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.until_shutdown() => return,
                    }
                }
            }
        };
        log::info!("pod {}: sandbox pid {}", self.pod.name, sb.pid);
        // Init containers, each to success; the sequence starts over on a
        // failure, unless the pod's policy says no.
        let mut backoff = Backoff::default();
        loop {
            match self.run_init(&sb).await {
                Ok(true) => break,
                Ok(false) => return destroy(sb).await,
                Err((name, code)) => {
                    if self.pod.restart == RestartPolicy::No {
                        let why = format!("init container {name} failed (exit status {code})");
                        log::error!("pod {}: {why}", self.pod.name);
                        {
                            let mut t = lock(&self.table);
                            for i in &self.main_rows {
                                if let Some(s) = t.get_mut(*i) {
                                    s.state = ContainerState::Failed;
                                    s.detail = why.clone();
                                }
                            }
                        }
                        self.until_shutdown().await;
                        return destroy(sb).await;
                    }
                    let d = backoff.after_run(Duration::ZERO);
                    log::warn!(
                        "pod {}: init container {name} failed (exit status {code}); again in {} ms",
                        self.pod.name,
                        d.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.until_shutdown() => return destroy(sb).await,
                    }
                }
            }
        }
        if self.is_shutdown() {
            return destroy(sb).await;
        }
        // The containers, together.
        let mut done = Vec::new();
        let controls = std::mem::take(&mut self.controls);
        for (n, (index, control)) in self.main_rows.iter().zip(controls).enumerate() {
            let mut task = self.task(*index, n, &sb, false);
            task.control = control;
            let (tx, rx) = oneshot::channel();
            done.push(rx);
            tokio::task::spawn_local(async move {
                task.run(Vec::new()).await;
                let _ = tx.send(());
            });
        }
        let _ = self.up.send(true);
        for d in done {
            let _ = d.await;
        }
        destroy(sb).await;
    }
}

/// Removes the sandbox from the bridge and kills it.
async fn destroy(sb: Sandbox) {
    let Sandbox {
        pid,
        pending,
        attachment,
    } = sb;
    let _ = tokio::task::spawn_blocking(move || {
        if let Some((bridge, a)) = attachment {
            if let Err(e) = bridge.detach(&a) {
                log::warn!("pod sandbox {pid}: leaving the bridge: {e}");
            }
        }
        sandbox::destroy(pid);
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pending.wait()).await;
}
