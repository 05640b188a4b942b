//! Work that gives way: a thread that runs at a lower CPU priority (a
//! higher nice value) than PID 1 and the containers it starts.
//!
//! After ready, the drivers nobody waits for (the API's virtio-serial
//! port, the rest of the coldplug: power button, input, …) load this way
//! while the containers start. A module load is CPU work in the kernel (a
//! signature check, hashing, relocation), so on a host with one busy CPU
//! the containers' start would otherwise share it with them; with more
//! CPUs, or an idle one, nothing changes.
//!
//! Before ready, overlay.ko loads the same way on the drivers' thread
//! ([`with_nice`], [`BESIDE_READY`]) while the network comes up.
//!
//! The priority is the thread's own (Linux's `setpriority(PRIO_PROCESS,
//! tid)`), not the process's.

use std::io;

use tokio::sync::oneshot;

/// The nice value of the drivers loaded after ready: below the containers
/// (0), not starved by them (a nice 10 thread gets about a tenth of a CPU
/// that a nice 0 one keeps busy).
pub const AFTER_READY: i32 = 10;

/// The nice value of overlay.ko's load, which runs while the network
/// comes up on the way to ready: it gets the CPU when that path waits.
pub const BESIDE_READY: i32 = 19;

/// Runs `f` on the calling thread at nice `nice`, then gives the thread
/// back its priority (a pool thread goes on to other work). Setting or
/// restoring a failed priority is logged; `f` runs anyway.
pub fn with_nice<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    let tid = rustix::thread::gettid();
    let before = rustix::process::getpriority_process(Some(tid));
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        log::warn!("cannot set a thread's CPU priority to nice {nice}: {e}");
    }
    let out = f();
    if let Ok(before) = before {
        if let Err(e) = rustix::process::setpriority_process(Some(tid), before) {
            log::warn!("cannot restore a thread's CPU priority to nice {before}: {e}");
        }
    }
    out
}

/// Runs `f` on a new thread named `name` at nice `nice`; its result
/// arrives on the receiver. If the priority cannot be set, `f` runs at the
/// normal one (logged).
pub fn spawn<T, F>(name: &str, nice: i32, f: F) -> io::Result<oneshot::Receiver<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
                log::warn!("{thread_name}: cannot set its CPU priority to nice {nice}: {e}");
            }
            let _ = tx.send(f());
        })?;
    Ok(rx)
}

/// Runs `f` as [`spawn`] does and waits for it; if no thread can be
/// started, runs it on the blocking pool at the normal priority. `None` if
/// `f` panicked.
pub async fn run<T, F>(name: &str, nice: i32, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + Clone + 'static,
{
    match spawn(name, nice, f.clone()) {
        Ok(rx) => rx.await.ok(),
        Err(e) => {
            log::warn!("{name}: no thread ({e}); running at the normal priority");
            tokio::task::spawn_blocking(f).await.ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn the_thread_runs_at_the_nice_value_and_the_caller_keeps_its_own() {
        let before = own_nice();
        let rx = spawn("yield-test", AFTER_READY, own_nice).unwrap();
        // Raising a priority needs CAP_SYS_NICE; lowering it never does.
        let want = AFTER_READY.max(before);
        assert_eq!(rx.blocking_recv().unwrap(), want);
        assert_eq!(own_nice(), before);
    }

    #[test]
    fn with_nice_runs_at_the_value_and_restores_it() {
        std::thread::spawn(|| {
            let before = own_nice();
            let inside = with_nice(BESIDE_READY, own_nice);
            assert_eq!(inside, BESIDE_READY.max(before));
            // Lowering a priority back takes CAP_SYS_NICE: root's tests check it.
            if rustix::process::geteuid().is_root() {
                assert_eq!(own_nice(), before);
            }
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn run_returns_the_result_and_none_after_a_panic() {
        assert_eq!(run("yield-test", AFTER_READY, || 7).await, Some(7));
        let panicked: Option<()> = run("yield-test", AFTER_READY, || panic!("on purpose")).await;
        assert_eq!(panicked, None);
    }
}
