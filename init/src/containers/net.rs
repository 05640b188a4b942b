//! Container networking for the supervisor: the host's bridge (set up once,
//! when the first bridged container or pod needs it) and the exec FIFO that
//! holds a bridged container's init until its network is attached, so its
//! program never starts without `eth0`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atoll_runtime::network::{Bridge, BridgeConfig};
use atoll_runtime::run::process::ExecFifo;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// How long the init may take to reach its exec FIFO.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
const FIFO: &str = "exec.fifo";

/// The bridge, set up on first use.
#[derive(Debug, Default)]
pub struct NetSlot {
    bridge: tokio::sync::OnceCell<Arc<Bridge>>,
    /// Loads the bridge's kernel modules first (none in tests on a host).
    modules: Option<Arc<crate::modules::ModuleDb>>,
}

/// What the bridge needs from the kernel, loaded with it.
pub const BRIDGE_MODULES: &[&str] = &[
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_fib_ipv4",
    "nft_ct",
];

impl NetSlot {
    pub fn new(modules: Option<Arc<crate::modules::ModuleDb>>) -> Self {
        Self {
            bridge: Default::default(),
            modules,
        }
    }

    /// The bridge `atoll0` with NAT (see docs/container-networking.md).
    pub async fn bridge(&self) -> Result<Arc<Bridge>, String> {
        self.bridge
            .get_or_try_init(|| async {
                let db = self.modules.clone();
                let b = tokio::task::spawn_blocking(move || {
                    if let Some(db) = db {
                        for m in BRIDGE_MODULES {
                            if let Err(e) = db.load(m) {
                                log::warn!("module {m}: {e}");
                            }
                        }
                    }
                    Bridge::setup(&BridgeConfig::default())
                })
                .await
                .map_err(|e| format!("bridge setup: {e}"))?
                .map_err(|e| format!("bridge setup: {e}"))?;
                log::info!("containers: bridge atoll0 up");
                Ok::<_, String>(Arc::new(b))
            })
            .await
            .cloned()
    }
}

/// Makes `state_dir/exec.fifo` and the [`ExecFifo`] the init waits on.
pub fn exec_fifo(state_dir: &Path) -> Result<ExecFifo, String> {
    let fifo = state_dir.join(FIFO);
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("making {}: {e}", fifo.display()))?;
    let dir = std::fs::File::open(state_dir)
        .map_err(|e| format!("opening {}: {e}", state_dir.display()))?;
    Ok(ExecFifo {
        dir: OwnedFd::from(dir),
        name: c"exec.fifo".to_owned(),
    })
}

/// Lets the init held on its exec FIFO go on to execve.
pub fn release(state_dir: &Path, pid: u32) -> Result<(), String> {
    let fifo = state_dir.join(FIFO);
    let fd = nix::fcntl::open(
        &fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let start = Instant::now();
    let result = loop {
        let mut buf = [0u8; 1];
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(1) => break Ok(()),
            Ok(_) | Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            Err(e) => break Err(format!("reading {}: {e}", fifo.display())),
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        if !alive {
            break Err("the container's init exited before its program started".into());
        }
        if start.elapsed() > RELEASE_TIMEOUT {
            break Err(format!(
                "the container's init did not reach its exec FIFO in {} s",
                RELEASE_TIMEOUT.as_secs()
            ));
        }
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u8));
    };
    let _ = std::fs::remove_file(&fifo);
    result
}
