//! Atoll's init: stage 1 in the initramfs, stage 2 as the host's PID 1.

fn main() {
    if std::path::Path::new(atoll_common::layout::INITRD_MARKER).exists() {
        atoll_init::stage1::main()
    } else {
        atoll_init::stage2::main()
    }
}
