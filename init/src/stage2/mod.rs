//! Stage 2 (owned by the stage-2 work).

/// Runs stage 2; never returns.
pub fn main() -> ! {
    loop {
        std::thread::park();
    }
}
