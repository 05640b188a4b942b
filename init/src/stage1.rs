//! Stage 1 (owned by the stage-1 work).

/// Runs stage 1; never returns.
pub fn main() -> ! {
    loop {
        std::thread::park();
    }
}
