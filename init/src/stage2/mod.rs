//! Stage 2.
pub mod bootstate;
pub mod console;
pub mod data;
pub mod etc;
pub mod ioctl;
pub mod journal;
pub mod loghub;
pub mod logstore;
pub mod machine_id;
pub mod mounts;
pub mod partition;
pub mod reaper;
#[cfg(test)]
mod testutil;

/// Runs stage 2; never returns.
pub fn main() -> ! {
    loop {
        std::thread::park();
    }
}
