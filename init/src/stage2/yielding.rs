//! Work that gives way: run at a lower CPU priority (a higher nice value)
//! than PID 1 and the containers it starts.
//!
//! After ready, the drivers nobody waits for (the API's virtio-serial
//! port, the rest of the coldplug: power button, input, …) load this way
//! ([`run`], [`AFTER_READY`]) while the containers start. A module load is
//! CPU work in the kernel (a signature check, hashing, relocation), so on a
//! host with one busy CPU the containers' start would otherwise share it
//! with them; with more CPUs, or an idle one, nothing changes.
//!
//! Before ready, overlay.ko loads the same way on the drivers' thread
//! ([`with_nice`], [`BESIDE_READY`]) while the network comes up.
//!
//! The priority is the calling thread's own (Linux's
//! `setpriority(PRIO_PROCESS, tid)`), not the process's, and the thread
//! gets its own back afterwards (a pool thread goes on to other work).

/// The nice value of the drivers loaded after ready: below the containers
/// (0), not starved by them (a nice 10 thread gets about a tenth of a CPU
/// that a nice 0 one keeps busy).
pub const AFTER_READY: i32 = 10;

/// The nice value of overlay.ko's load, which runs while the network
/// comes up on the way to ready: it gets the CPU when that path waits.
pub const BESIDE_READY: i32 = 19;

/// Gives the thread back its priority when dropped, also when `f` panics.
struct Restore {
    tid: rustix::process::Pid,
    before: Option<i32>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(before) = self.before {
            if let Err(e) = rustix::process::setpriority_process(Some(self.tid), before) {
                log::warn!("cannot restore a thread's CPU priority to nice {before}: {e}");
            }
        }
    }
}

/// Runs `f` on the calling thread at nice `nice`, then gives the thread
/// back its priority (also if `f` panics). Setting or restoring a failed
/// priority is logged; `f` runs anyway.
pub fn with_nice<T>(nice: i32, f: impl FnOnce() -> T) -> T {
    let tid = rustix::thread::gettid();
    let _restore = Restore {
        tid,
        before: rustix::process::getpriority_process(Some(tid)).ok(),
    };
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        log::warn!("cannot set a thread's CPU priority to nice {nice}: {e}");
    }
    f()
}

/// Runs `f` on the blocking pool at nice `nice` ([`with_nice`]) and waits
/// for it. `None` if `f` panicked.
pub async fn run<T, F>(nice: i32, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(move || with_nice(nice, f))
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn run_uses_the_nice_value_and_the_caller_keeps_its_own() {
        let before = own_nice();
        // Raising a priority needs CAP_SYS_NICE; lowering it never does.
        let want = AFTER_READY.max(before);
        assert_eq!(run(AFTER_READY, own_nice).await, Some(want));
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
                // Also after a panic (a pool thread lives on).
                let r =
                    std::panic::catch_unwind(|| with_nice(BESIDE_READY, || panic!("on purpose")));
                assert!(r.is_err());
                assert_eq!(own_nice(), before);
            }
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn run_returns_the_result_and_none_after_a_panic() {
        assert_eq!(run(AFTER_READY, || 7).await, Some(7));
        let panicked: Option<()> = run(AFTER_READY, || panic!("on purpose")).await;
        assert_eq!(panicked, None);
    }
}
