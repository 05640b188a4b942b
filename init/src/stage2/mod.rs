//! Stage 2: the host's PID 1, run from the verified root after stage 1
//! switched into it (docs/boot.md, "Boot flow" step 4; docs/logging.md).
//!
//! Up to ready, in order: the base mounts ([`mounts`]); the journald socket
//! ([`journal`]); DATA on /var ([`data`], [`partition`]); the machine id and
//! /etc ([`machine_id`], [`etc`]); the log store ([`logstore`]); the host
//! API socket ([`api`]); then the ready line. After it: cgroup controllers,
//! kernel messages ([`kmsg`]), module coldplug, the power button
//! ([`power_button`]) and the API's virtio-serial port, and the boot is
//! marked good in grubenv ([`bootstate`]). A trial boot starts the coldplug
//! at once instead, to arm the [`watchdog`] early. Every step's duration
//! goes into the status's boot time split ([`status`]). Then PID 1 reaps
//! orphans ([`reaper`]) and waits for a shutdown request (signals, the power
//! button, the API), which [`shutdown`] carries out.
//!
//! PID 1 must never exit: panics in tasks are logged and the task is
//! restarted; if the event loop itself dies, [`shutdown::fallback_loop`]
//! keeps reaping and still honours shutdown signals.

pub mod api;
pub mod bootstate;
pub mod config;
pub mod console;
pub mod data;
pub mod etc;
pub mod ioctl;
pub mod journal;
pub mod kmsg;
pub mod loghub;
pub mod logstore;
pub mod machine_id;
pub mod mounts;
pub mod partition;
pub mod power_button;
pub mod reaper;
pub mod shutdown;
pub mod status;
#[cfg(test)]
pub(crate) mod testutil;
pub mod watchdog;
pub mod yielding;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_common::api::{BootMode, DataStatus, RootStatus, Stage1Times, Status};
use atoll_common::layout::{self, Slot};
use nix::mount::MsFlags;
use tokio::sync::mpsc;

use self::loghub::{init_record, HubLogger, LogHub};
use self::shutdown::ShutdownKind;
use self::status::Steps;
use crate::clock;
use crate::cmdline::BootArgs;
use crate::modules::ModuleDb;
use crate::pcidefer;
use crate::sysblock::SysBlock;
use atoll_common::error::error_chain;

/// Runs stage 2; never returns.
pub fn main() -> ! {
    let start_ms = clock::boottime_ms();
    // Run from stage 1's copy (an open file), the kernel names this process
    // after its descriptor's number.
    let _ = nix::sys::prctl::set_name(c"init");
    HubLogger::install();
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("init: panic: {info}");
        console::line(&msg);
        LogHub::global().try_push_quiet(init_record(2, msg));
    }));
    // Ctrl-Alt-Del sends us SIGINT instead of rebooting on the spot.
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let outcome = std::panic::catch_unwind(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| {
                let kind = rt.block_on(run(start_ms));
                // Do not wait for blocking tasks (a hung mount must not hold up the shutdown).
                rt.shutdown_background();
                kind
            })
    });
    match outcome {
        Ok(Ok(kind)) => shutdown::execute(kind),
        Ok(Err(e)) => console::line(&format!(
            "atoll: ERROR: cannot start the event loop ({e}); only reaping and shutdown work"
        )),
        Err(_) => console::line(
            "atoll: ERROR: the event loop died; only reaping and shutdown work from now on",
        ),
    }
    shutdown::fallback_loop()
}

/// Spawns `make()`'s future and starts it again (after a second) whenever it
/// panics or ends.
fn supervise<F, Fut>(name: &'static str, make: F)
where
    F: Fn() -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    tokio::task::spawn_local(async move {
        loop {
            let r = tokio::task::spawn_local(make()).await;
            match r {
                Err(e) if e.is_panic() => log::error!("{name} panicked; restarting it"),
                _ => log::warn!("{name} stopped; restarting it"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Sends a shutdown request for each of these signals.
fn watch_signals(tx: &mpsc::UnboundedSender<ShutdownKind>) {
    use tokio::signal::unix::{signal, SignalKind};
    let table = [
        (SignalKind::terminate(), ShutdownKind::Reboot, "SIGTERM"),
        (SignalKind::interrupt(), ShutdownKind::Reboot, "SIGINT"),
        (
            SignalKind::user_defined2(),
            ShutdownKind::Poweroff,
            "SIGUSR2",
        ),
        (
            SignalKind::from_raw(nix::libc::SIGPWR),
            ShutdownKind::Poweroff,
            "SIGPWR",
        ),
    ];
    for (sig, kind, name) in table {
        match signal(sig) {
            Ok(mut s) => {
                let tx = tx.clone();
                tokio::task::spawn_local(async move {
                    while s.recv().await.is_some() {
                        log::info!("{name} received: {kind}");
                        let _ = tx.send(kind);
                    }
                });
            }
            Err(e) => log::error!("cannot watch {name}: {e}"),
        }
    }
}

async fn run(start_ms: u64) -> ShutdownKind {
    let local = tokio::task::LocalSet::new();
    local.run_until(boot(start_ms)).await
}

/// The trial-boot watchdog, shared by the module thread (which arms it)
/// and the event loop (which feeds it, and disarms it at ready).
#[derive(Debug, Default)]
struct DogSlot {
    dog: Option<watchdog::Watchdog>,
    ready: bool,
    /// `[update] ready_deadline` once the config is read.
    deadline: Option<Duration>,
}

type SharedDog = Arc<Mutex<DogSlot>>;

fn open_modules() -> Option<ModuleDb> {
    match ModuleDb::for_running_kernel() {
        Ok(db) => Some(db),
        Err(e) => {
            log::warn!("kernel modules unavailable: {}", error_chain(&e));
            None
        }
    }
}

fn load_modules(db: &ModuleDb, names: &[&str]) {
    for m in names {
        if let Err(e) = db.load(m) {
            log::warn!("module {m}: {}", error_chain(&e));
        }
    }
}

/// Loads softdog and arms /dev/watchdog, unless the boot got ready meanwhile.
fn arm_watchdog(db: &ModuleDb, slot: &SharedDog) {
    if let Err(e) = db.load("softdog") {
        log::warn!("trial boot: no watchdog: {}", error_chain(&e));
        return;
    }
    let mut s = lock(slot);
    if s.ready {
        return;
    }
    match watchdog::Watchdog::arm() {
        Ok((w, timeout)) => {
            match timeout {
                Some(t) => log::info!("trial boot: watchdog armed until ready (timeout {t} s)"),
                None => log::info!("trial boot: watchdog armed until ready"),
            }
            s.dog = Some(w);
        }
        Err(e) => log::warn!("trial boot: cannot open /dev/watchdog: {e}"),
    }
}

/// Every module the hardware asks for by modalias, plus the input ones that
/// coldplug cannot match (evdev binds to input devices that appear only
/// once `button` is loaded). The callers have already released every
/// deferred PCI function ([`release_deferred`]), so the coldplug sees them.
fn coldplug_rest(db: &ModuleDb) {
    let report = db.coldplug();
    for (m, why) in &report.failed {
        log::warn!("module {m}: {why}");
    }
    load_modules(db, &["button", "evdev"]);
}

/// Binds the virtio PCI functions stage 1 left without a driver
/// ([`pcidefer`]) whose class `which` accepts.
fn release_deferred(which: &dyn Fn(pcidefer::Class) -> bool) {
    let released = pcidefer::release(Path::new(pcidefer::PCI_BUS), which);
    if !released.is_empty() {
        log::debug!("bound the deferred PCI functions {}", released.join(", "));
    }
}

/// The drivers before ready, one at a time in the order the boot needs
/// them: QEMU's fw_cfg (a config source; on a trial boot the watchdog
/// first), announced through `config_drivers` so that the config step can
/// go on; then the NICs (bound now: [`pcidefer`]) and their drivers,
/// announced through `nic_drivers` for the network step; then what the
/// containers need ([`CONTAINER_MODULES`]), which the task's end announces.
/// Module loads are CPU work in the kernel (a signature check, hashing,
/// relocation): on one CPU, loads in parallel only share it, so the network
/// gets its drivers first, and the containers' drivers wait for the network
/// step to end (`network_done` sent or dropped), for at most
/// [`CONTAINER_DRIVERS_HOLD`]. Reading overlay.ko from the slot is hashing
/// in dm-verity's workers, which run above every priority this thread can
/// take, so only waiting keeps it off the network step's CPU. With more CPUs
/// the network step runs beside the containers' load. The rest loads after
/// ready.
fn coldplug_early(
    trial: bool,
    dog: SharedDog,
    config_drivers: tokio::sync::oneshot::Sender<Option<Arc<ModuleDb>>>,
    nic_drivers: tokio::sync::oneshot::Sender<()>,
    network_done: std::sync::mpsc::Receiver<()>,
) -> Option<Arc<ModuleDb>> {
    let db = open_modules().map(Arc::new);
    if let Some(db) = &db {
        if trial {
            arm_watchdog(db, &dog);
        }
        let report = db.coldplug_matching(&crate::modules::is_fw_cfg_modalias);
        for (m, why) in &report.failed {
            log::warn!("module {m}: {why}");
        }
    }
    let _ = config_drivers.send(db.clone());
    let db = db?;
    release_deferred(&|c| c == pcidefer::Class::Early);
    let report = db.coldplug_matching(&crate::modules::is_network_modalias);
    for (m, why) in &report.failed {
        log::warn!("module {m}: {why}");
    }
    let _ = nic_drivers.send(());
    if std::thread::available_parallelism().map_or(1, |n| n.get()) == 1 {
        // Sent, dropped or timed out: go on either way.
        let _ = network_done.recv_timeout(CONTAINER_DRIVERS_HOLD);
    }
    // The network step may still run (slow DHCP) and goes first; the work
    // after ready waits for this load.
    yielding::with_nice(yielding::BESIDE_READY, || {
        load_modules(&db, CONTAINER_MODULES)
    });
    Some(db)
}

/// Everything at once (boots where stage 1 left no disk).
fn coldplug_all(trial: bool, dog: SharedDog) -> Option<Arc<ModuleDb>> {
    let db = Arc::new(open_modules()?);
    if trial {
        arm_watchdog(&db, &dog);
    }
    release_deferred(&|_| true);
    load_modules(&db, &["virtio_console"]);
    coldplug_rest(&db);
    load_modules(&db, CONTAINER_MODULES);
    Some(db)
}

async fn join_modules(
    task: tokio::task::JoinHandle<Option<Arc<ModuleDb>>>,
) -> Option<Arc<ModuleDb>> {
    match task.await {
        Ok(db) => db,
        Err(e) => {
            log::error!("module coldplug failed: {e}");
            None
        }
    }
}

fn read_stage1() -> Option<Stage1Times> {
    let text = std::fs::read_to_string(layout::STAGE1_TIMES).ok()?;
    match serde_json::from_str(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!("{} is unreadable: {e}", layout::STAGE1_TIMES);
            None
        }
    }
}

/// The boot disk: the disk of the booted slot, or any disk with a DATA partition.
fn boot_disk(sys: &SysBlock, stage1: Option<&Stage1Times>, slot: Option<Slot>) -> Option<String> {
    if let Some(d) = stage1.and_then(|s| sys.disk_of(&s.slot_device)) {
        return Some(d);
    }
    if let Some(d) = slot.and_then(|s| sys.disk_with(s.label())) {
        return Some(d);
    }
    sys.disk_with(layout::LABEL_DATA)
}

/// How long the work after ready waits for the containers' drivers.
const PREPARED_WAIT: Duration = Duration::from_secs(10);

/// What containers need from the kernel: overlayfs for their root.
const CONTAINER_MODULES: &[&str] = &["overlay"];

/// On one CPU, how long [`CONTAINER_MODULES`] wait for the network step
/// after the NICs' drivers: long enough for a link and a lease on a local
/// network (~20 ms of a TCG guest's time), short enough that a container
/// that needs no network hardly waits when DHCP is slow, and then the CPU
/// is idle anyway.
const CONTAINER_DRIVERS_HOLD: Duration = Duration::from_millis(100);

fn say(priority: u8, line: &str) {
    console::line(line);
    LogHub::global().push_quiet(init_record(priority, line.to_string()));
}

fn mount_tmpfs(target: &str, mode: &str) -> Result<(), nix::Error> {
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(mode),
    )
}

async fn boot(start_ms: u64) -> ShutdownKind {
    let hub = LogHub::global();
    let (tx, mut rx) = mpsc::unbounded_channel::<ShutdownKind>();
    let mut steps = Steps::starting_at(start_ms);
    supervise("reaper", reaper::run);
    watch_signals(&tx);
    steps.done("event loop");

    // 1. Base mounts; cgroup2 meanwhile (its mount waits for an RCU grace
    // period), awaited before the containers start.
    for e in mounts::mount_base() {
        log::error!("{}", error_chain(&e));
    }
    let cgroup2 = tokio::task::spawn_blocking(mounts::mount_cgroup2);
    steps.done("mounts");
    let args = match BootArgs::from_proc() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            log::error!("kernel command line: {e}");
            BootArgs::default()
        }
        Err(e) => {
            log::error!("/proc/cmdline: {e}");
            BootArgs::default()
        }
    };
    let stage1 = read_stage1();
    steps.done("cmdline");

    // 2. The journald socket, early: records wait in memory until /var.
    match journal::bind(Path::new(layout::JOURNAL_SOCKET)) {
        Ok(sock) => {
            let sock = Arc::new(Mutex::new(Some(sock)));
            supervise("journal socket", move || {
                let sock = sock.clone();
                async move {
                    let s = sock.lock().ok().and_then(|mut g| g.take());
                    let s = match s {
                        Some(s) => s,
                        None => match journal::bind(Path::new(layout::JOURNAL_SOCKET)) {
                            Ok(s) => s,
                            Err(e) => {
                                log::error!("{}", error_chain(&e));
                                std::future::pending::<()>().await;
                                return;
                            }
                        },
                    };
                    if let Err(e) = journal::serve(s, LogHub::global()).await {
                        log::error!("journal socket: {e}");
                    }
                }
            });
        }
        Err(e) => log::error!("{}", error_chain(&e)),
    }
    steps.done("journal socket");

    // The drivers the config step needs (fw_cfg, then the NICs) load now,
    // beside DATA; a trial boot arms its watchdog first. The rest (IDE,
    // input, the API port, …) loads after ready.
    let trial = args.mode == Some(BootMode::Trial);
    let dog: SharedDog = Arc::default();
    if trial {
        tokio::task::spawn_local(feed_watchdog(dog.clone(), args.slot));
    }
    let (config_drivers_tx, config_drivers) = tokio::sync::oneshot::channel();
    let (nic_drivers_tx, nic_drivers_rx) = tokio::sync::oneshot::channel();
    let (network_done, network_done_rx) = std::sync::mpsc::channel();
    let mut modules_task = {
        let d = dog.clone();
        Some(tokio::task::spawn_blocking(move || {
            coldplug_early(trial, d, config_drivers_tx, nic_drivers_tx, network_done_rx)
        }))
    };

    // 3. DATA on /var.
    let sys = SysBlock::default();
    let mut disk = boot_disk(&sys, stage1.as_ref(), args.slot);
    let mut modules_early = None;
    if disk.is_none() {
        // Stage 1 normally loaded the storage drivers; if it did not (booted
        // some other way), they come with the coldplug.
        let task = modules_task.take().unwrap_or_else(|| {
            let d = dog.clone();
            tokio::task::spawn_blocking(move || coldplug_all(trial, d))
        });
        modules_early = Some(join_modules(task).await);
        disk = boot_disk(&sys, stage1.as_ref(), args.slot);
    }
    let mut data_status = match &disk {
        Some(d) => {
            let part = sys.find(d, layout::LABEL_DATA);
            let kernel_view = part.as_ref().and_then(|p| {
                let start = sys.start(&p.name)?;
                let size = sys.size(&p.name)?;
                Some((sys.size(d)?, (start, start + size.checked_sub(1)?)))
            });
            let loc = data::DataLocation {
                disk: Path::new("/dev").join(d),
                device: part.map(|p| p.device()),
                kernel_view,
            };
            let r = tokio::task::spawn_blocking(move || {
                let mut sys = data::Timed::<data::RealSys>::default();
                let st = data::setup(&mut sys, &loc, Path::new("/var"));
                (st, sys.steps)
            })
            .await;
            match r {
                Ok((s, data_steps)) => {
                    steps.steps.extend(data_steps);
                    s
                }
                Err(e) => {
                    let _ = mount_tmpfs("/var", "mode=0755");
                    DataStatus {
                        state: format!("failed: {e}"),
                        ..Default::default()
                    }
                }
            }
        }
        None => {
            say(
                3,
                "atoll: ERROR: cannot find the boot disk; /var is a tmpfs for this boot",
            );
            let _ = mount_tmpfs("/var", "mode=0755");
            DataStatus {
                state: "failed: boot disk not found".into(),
                ..Default::default()
            }
        }
    };
    data::fill_usage(&mut data_status, Path::new("/var"));
    steps.done("data (total)");

    // 4. Machine id, how the last boot ended, /etc.
    let state_existed = Path::new(layout::VAR_MACHINE_ID).exists();
    let previous_shutdown =
        shutdown::previous_shutdown(Path::new(shutdown::CLEAN_MARKER), state_existed);
    // A new id is drawn only when none is stored (the first boot): a
    // getrandom that waits for the kernel's entropy makes the kernel spin to
    // gather jitter until the pool is seeded (about a second of CPU under
    // TCG), off the event loop.
    let stored_or_new =
        || machine_id::load_or_create(Path::new(layout::VAR_MACHINE_ID), machine_id::generate);
    let machine_id = match tokio::task::spawn_blocking(stored_or_new)
        .await
        .unwrap_or_else(|_| stored_or_new())
    {
        Ok(m) => m.id,
        Err(e) => {
            log::error!("machine id: {}", error_chain(&e));
            machine_id::generate().unwrap_or_else(|_| "0".repeat(31) + "1")
        }
    };
    let hostname = etc::default_hostname(&machine_id);
    if let Err(e) = mount_tmpfs("/etc", "mode=0755") {
        log::error!("mounting a tmpfs on /etc: {e}");
    }
    if let Err(e) = etc::render(Path::new("/etc"), &hostname, &machine_id) {
        log::error!("{}", error_chain(&e));
    }
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        log::error!("sethostname {hostname}: {e}");
    }
    steps.done("machine id, /etc");

    // 5. The log store on /var.
    match logstore::LogStore::open(Path::new(layout::VAR_LOG_DIR)) {
        Ok(store) => hub.open_store(store),
        Err(e) => log::error!("{}", error_chain(&e)),
    }
    steps.done("log store");

    // 6. The host API. The version is the slot's (os-release), which a
    // release may set apart from the binaries' own.
    let os_version = status::slot_version(Path::new(layout::SLOT_RELEASE))
        .unwrap_or_else(|| atoll_common::VERSION.to_string());
    let status = Arc::new(Mutex::new(Status {
        version: os_version.clone(),
        hostname: hostname.clone(),
        machine_id: machine_id.clone(),
        booted_slot: args.slot,
        boot_mode: args.mode.unwrap_or(BootMode::Unknown),
        ready: false,
        uptime_ms: 0,
        boot_times: status::boot_times(stage1.as_ref(), start_ms, None, &steps.steps),
        slots: Vec::new(),
        grubenv: "not read yet".into(),
        data: data_status,
        root: RootStatus::default(),
        previous_shutdown,
    }));
    let config_report = Arc::new(Mutex::new(atoll_common::api::ConfigReport {
        source: "none yet".into(),
        state: "the boot has not reached the config step".into(),
        ..Default::default()
    }));
    let net_status: Arc<Mutex<atoll_common::api::NetStatus>> = Arc::default();
    let container_table: crate::containers::Table = Arc::default();
    let (actions_tx, actions_rx) = mpsc::unbounded_channel();
    let (updates_tx, updates_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(api::ApiContext {
        status: status.clone(),
        refresh: Some(status::refresh),
        hub,
        shutdown: tx.clone(),
        config: config_report.clone(),
        net: net_status.clone(),
        containers: container_table.clone(),
        container_actions: actions_tx,
        updates: updates_tx,
    });
    let api_up = match api::bind(Path::new(layout::API_SOCKET)) {
        Ok(listener) => {
            let listener = Arc::new(Mutex::new(Some(listener)));
            let c = ctx.clone();
            supervise("API socket", move || {
                let c = c.clone();
                let l = listener.lock().ok().and_then(|mut g| g.take());
                async move {
                    let l = match l {
                        Some(l) => l,
                        None => match api::bind(Path::new(layout::API_SOCKET)) {
                            Ok(l) => l,
                            Err(e) => {
                                log::error!("{}", error_chain(&e));
                                return;
                            }
                        },
                    };
                    api::serve_socket(l, c).await
                }
            });
            true
        }
        Err(e) => {
            log::error!("{}", error_chain(&e));
            false
        }
    };
    steps.done("api");

    // 7. The drivers, then the config and the network.
    // The config sources' drivers; the NICs' may still be loading.
    // The task goes on with the containers' drivers, which the containers
    // wait for (`prepared` below).
    let (db, mut nic_drivers, container_drivers) = match (modules_early.take(), modules_task.take())
    {
        (Some(db), _) => (db, None, None),
        (None, Some(task)) => match config_drivers.await {
            Ok(db) => (db, Some(nic_drivers_rx), Some(task)),
            // The coldplug died before fw_cfg: what it left is all there is.
            Err(_) => (join_modules(task).await, None, None),
        },
        (None, None) => (None, None, None),
    };
    steps.done("modules");
    let step = config::provision_config(
        db.clone(),
        &machine_id,
        &config_report,
        &net_status,
        &mut nic_drivers,
        &mut steps,
    )
    .await;
    lock(&dog).deadline = step.config.update.ready_deadline.get().copied();
    lock(&status).hostname = step.hostname.clone();

    // 7b. The config's containers, supervised from here on: those with no
    // network and a local image start once overlayfs's module is loaded
    // (after the NICs') and cgroup2 is mounted, the rest once the network
    // is configured too.
    let (prepared_tx, prepared) = tokio::sync::watch::channel(false);
    tokio::task::spawn_local(async move {
        if let Some(task) = container_drivers {
            join_modules(task).await;
        }
        match cgroup2.await {
            Ok(errors) => {
                for e in errors {
                    log::error!("{}", error_chain(&e));
                }
            }
            Err(e) => log::error!("mounting cgroup2: {e}"),
        }
        let _ = prepared_tx.send(true);
    });
    let (network_up, network) = tokio::sync::watch::channel(false);
    let supervisor = std::rc::Rc::new(crate::containers::Supervisor::start(
        &step.config,
        crate::containers::Paths::default(),
        container_table,
        db.clone(),
        crate::containers::HostReady {
            prepared: prepared.clone(),
            network,
        },
    ));
    tokio::task::spawn_local(supervisor.clone().serve_actions(actions_rx));
    steps.done("containers started");
    if let Some(done) = nic_drivers.take() {
        // An error is a coldplug that died: nothing more to wait for.
        let _ = done.await;
    }
    steps.done("NIC drivers");
    let prov = config::provision_network(step, &net_status, &mut steps).await;
    let _ = network_up.send(true);
    let _ = network_done.send(());
    // 7c. The update service: answers the API now, runs the agent once the
    // boot is marked good.
    let updates = crate::updates::Updates::new(
        layout::SLOT_UPDATER,
        prov.config.update.server.clone(),
        tx.clone(),
    );
    tokio::task::spawn_local(updates.clone().serve(updates_rx));
    let health_deadline = prov
        .config
        .update
        .health_deadline
        .get()
        .copied()
        .unwrap_or(DEFAULT_HEALTH_DEADLINE);

    // A test release that must never get ready (docs/updates.md,
    // "Testing rollbacks") stops here and only serves shutdown requests.
    match test_fault() {
        Some(f) if f == layout::TEST_FAULT_NEVER_READY => {
            say(
                3,
                &format!(
                    "atoll: test fault {f} ({}): this boot stops short of ready",
                    layout::SLOT_TEST_FAULT
                ),
            );
            return until_stopped(&mut rx, &updates, &supervisor, &prov.net).await;
        }
        Some(f) => log::warn!("unknown test fault {f:?} in {}", layout::SLOT_TEST_FAULT),
        None => {}
    }

    // 8. Ready.
    let ready_ms = clock::boottime_ms();
    let slot = args.slot.map(|s| s.letter()).unwrap_or("?");
    let ready = format!("{} version={os_version} slot={slot}", layout::READY_PREFIX);
    console::line(&ready);
    hub.push_quiet(init_record(5, ready));
    if !api_up {
        log::error!("ready without the API socket");
    }
    steps.done("ready");
    {
        let mut s = lock(&status);
        s.ready = true;
        s.boot_times = status::boot_times(stage1.as_ref(), start_ms, Some(ready_ms), &steps.steps);
    }
    let t = lock(&status).boot_times.clone();
    log::info!(
        "boot took {} ms: kernel {} ms, stage 1 {} ms, stage 2 {} ms",
        t.total_ms,
        t.kernel_ms,
        t.stage1_ms,
        t.stage2_ms
    );

    // 9. After ready: the API's virtio-serial port, the remaining drivers,
    // cgroup controllers, kernel messages, the power button.
    {
        let mut d = lock(&dog);
        d.ready = true;
        if let Some(w) = d.dog.take() {
            w.disarm();
        }
    }
    // First overlay.ko, still loading at the lowest priority (from the
    // network step): the work below would starve it, and the containers
    // wait for it. Then the drivers, giving way to the containers starting
    // meanwhile ([`yielding`]).
    let mut prepared_now = prepared.clone();
    let wait = prepared_now.wait_for(|p| *p);
    if tokio::time::timeout(PREPARED_WAIT, wait).await.is_err() {
        log::warn!(
            "overlay.ko and cgroup2 not ready {} s after ready; loading the remaining drivers anyway",
            PREPARED_WAIT.as_secs()
        );
    }
    if let Some(db) = db.clone() {
        let d = db.clone();
        let api_port = move || {
            release_deferred(&|_| true);
            load_modules(&d, &["virtio_console"])
        };
        yielding::run(yielding::AFTER_READY, api_port).await;
        start_virtio_port(&ctx).await;
        steps.done("after ready: API port");
        let rest = move || coldplug_rest(&db);
        yielding::run(yielding::AFTER_READY, rest).await;
        steps.done("after ready: coldplug");
    }
    if let Err(e) = mounts::enable_cgroup_controllers(Path::new("/sys/fs/cgroup")) {
        log::warn!("cgroup controllers: {e}");
    }
    tokio::task::spawn_local(kmsg::run(hub));
    steps.done("after ready: cgroups");
    for dev in power_buttons().await {
        let tx = tx.clone();
        tokio::task::spawn_local(power_button::watch(dev, tx));
    }
    start_virtio_port(&ctx).await;
    steps.done("after ready: devices");

    // 10. Mark the boot good; a trial boot only once its containers are
    // healthy (docs/updates.md, "Trial boots").
    let esp = disk
        .as_deref()
        .and_then(|d| sys.find(d, layout::LABEL_ESP))
        .map(|p| p.device());
    let version = status::slot_version(Path::new(layout::SLOT_RELEASE));
    let healthy = if trial {
        assess_trial(&supervisor, health_deadline, args.slot).await
    } else {
        true
    };
    match (args.slot, esp) {
        _ if !healthy => {
            let _ = tx.send(ShutdownKind::Reboot);
        }
        (Some(slot), Some(esp)) => {
            let verity = args.verity.clone();
            let damaged = args.grubenv_damaged;
            let esp_dev = esp.clone();
            let r = tokio::task::spawn_blocking(move || {
                if let Some(db) = &db {
                    load_modules(db, &["vfat", "nls_cp437", "nls_ascii"]);
                }
                bootstate::mark_good_on_esp(&esp, slot, verity.as_deref(), damaged)
            })
            .await;
            if matches!(r, Ok(Ok(_))) {
                // The ESP stays mounted for the agent (a quick vfat mount).
                let part = |label| {
                    disk.as_deref()
                        .and_then(|d| sys.find(d, label))
                        .map(|p| p.device())
                };
                updates.start(
                    &esp_dev,
                    part(layout::LABEL_ROOT_A).as_deref(),
                    part(layout::LABEL_ROOT_B).as_deref(),
                );
            } else {
                log::error!("update agent not started: the boot is not marked good");
            }
            let mut s = lock(&status);
            match r {
                Ok(Ok(rec)) => {
                    if rec.write_env || rec.write_good {
                        log::info!("slot {slot} marked good in grubenv");
                    }
                    if rec.report != "ok" {
                        log::warn!("grubenv {}", rec.report);
                    }
                    s.slots = bootstate::slot_table(&rec.state, Some(slot), version.as_deref());
                    s.grubenv = rec.report;
                }
                Ok(Err(e)) => {
                    let msg = error_chain(&e);
                    log::error!("cannot mark the boot good: {msg}");
                    s.grubenv = format!("unreadable: {msg}");
                }
                Err(e) => s.grubenv = format!("unreadable: {e}"),
            }
        }
        (None, _) => {
            log::warn!("no atoll.slot on the kernel command line: boot state left alone");
            lock(&status).grubenv = "unreadable: booted without atoll.slot".into();
        }
        (_, None) => {
            log::error!("no ESP partition found: cannot mark the boot good");
            lock(&status).grubenv = "unreadable: no ESP partition".into();
        }
    }
    steps.done("after ready: mark good");
    lock(&status).boot_times =
        status::boot_times(stage1.as_ref(), start_ms, Some(ready_ms), &steps.steps);

    until_stopped(&mut rx, &updates, &supervisor, &prov.net).await
}

/// Serves until asked to stop, then stops the workload. The update agent
/// first (it must not start a write the shutdown cuts short for nothing),
/// then the containers (they may still talk to the network), then the DHCP
/// leases go back to their servers while the network still works.
async fn until_stopped(
    rx: &mut mpsc::UnboundedReceiver<ShutdownKind>,
    updates: &crate::updates::Updates,
    supervisor: &crate::containers::Supervisor,
    net: &crate::net::NetHandle,
) -> ShutdownKind {
    let kind = match rx.recv().await {
        Some(kind) => kind,
        None => std::future::pending().await,
    };
    updates.stop().await;
    supervisor.stop_all().await;
    net.shutdown().await;
    kind
}

/// `[update] health_deadline` when the config has none that parses.
const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(300);

/// A trial boot's assessment: true when every container with a healthcheck
/// became healthy within `deadline`. Otherwise says why on the console;
/// the caller reboots without marking the slot good, so the boot loader
/// spends a try and falls back to the other slot when they run out.
async fn assess_trial(
    supervisor: &crate::containers::Supervisor,
    deadline: Duration,
    slot: Option<Slot>,
) -> bool {
    let trial_slot = slot;
    let slot = slot.map(|s| s.letter()).unwrap_or("?");
    log::info!(
        "trial boot of slot {slot}: waiting up to {} s for the containers to be healthy",
        deadline.as_secs()
    );
    match supervisor.wait_healthy(deadline).await {
        Ok(()) => {
            log::info!("trial boot of slot {slot}: containers healthy");
            true
        }
        Err(why) => {
            say(
                3,
                &format!(
                    "atoll: ERROR: trial boot of slot {slot} failed its health check: {why}; \
                     rebooting without marking it good"
                ),
            );
            record_trial_failure(trial_slot, format!("containers {why}"));
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Serves the API on the virtio-serial port, once (later calls do nothing).
async fn start_virtio_port(ctx: &Arc<api::ApiContext>) {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Some(port) = virtio_port().await {
        STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
        let c = ctx.clone();
        supervise("API port", move || api::serve_port(port.clone(), c.clone()));
    }
}

/// Feeds the trial-boot watchdog every [`watchdog::PET_EVERY`] until ready,
/// for at most the ready deadline (`[update] ready_deadline`, or
/// [`watchdog::DEFAULT_READY_DEADLINE`] until the config is read): a boot
/// stuck longer is taken as hung.
async fn feed_watchdog(dog: SharedDog, slot: Option<Slot>) {
    let start = tokio::time::Instant::now();
    let deadline = loop {
        let deadline = {
            let mut d = lock(&dog);
            if d.ready {
                return;
            }
            if let Some(w) = d.dog.as_mut() {
                w.pet();
            }
            d.deadline.unwrap_or(watchdog::DEFAULT_READY_DEADLINE)
        };
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            break deadline;
        }
        tokio::time::sleep(left.min(watchdog::PET_EVERY)).await;
    };
    say(
        3,
        &format!(
            "atoll: trial boot not ready after {} s (ready_deadline): the watchdog reboots it",
            deadline.as_secs()
        ),
    );
    record_trial_failure(
        slot,
        format!("not ready after {} s (ready_deadline)", deadline.as_secs()),
    );
}

/// Leaves why this trial boot failed on /var for the update agent, which
/// puts it in the reason the release goes on the bad list
/// (docs/updates.md, "Trial boots").
fn record_trial_failure(slot: Option<Slot>, reason: String) {
    let Some(slot) = slot else {
        return;
    };
    let version = status::slot_version(Path::new(layout::SLOT_RELEASE))
        .unwrap_or_else(|| atoll_common::VERSION.to_string());
    let record = atoll_common::trial::TrialFailure {
        slot,
        version,
        reason,
    };
    if let Err(e) = record.save(Path::new(layout::VAR_TRIAL_FAILURE)) {
        log::warn!(
            "cannot record why the trial boot failed in {}: {e}",
            layout::VAR_TRIAL_FAILURE
        );
    }
}

/// The fault a test release asks for ([`layout::SLOT_TEST_FAULT`]), if any.
fn test_fault() -> Option<String> {
    let text = std::fs::read_to_string(layout::SLOT_TEST_FAULT).ok()?;
    Some(text.trim().to_string())
}

/// The power button event devices; the `button` driver may register them a
/// little after its module loaded.
async fn power_buttons() -> Vec<PathBuf> {
    for _ in 0..10 {
        let found = power_button::find(Path::new("/sys/class/input"));
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log::warn!("no power button found");
    Vec::new()
}

/// The API's virtio-serial port, if the VM has one.
async fn virtio_port() -> Option<PathBuf> {
    let sys = Path::new("/sys/class/virtio-ports");
    if !sys.exists() {
        return None;
    }
    for _ in 0..10 {
        if let Some(dev) = api::find_virtio_port(sys, layout::API_VIRTIO_PORT) {
            if dev.exists() {
                return Some(dev);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
