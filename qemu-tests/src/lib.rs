//! Atoll's whole-system test harness: boots real disk images under QEMU
//! (TCG, SeaBIOS or OVMF) and checks what a user would see — the serial
//! console, the host API over virtio-serial, the disk afterwards.
//!
//! - [`vm`]: a [`Vm`] builder and handle (QEMU process, temp dir, waits);
//! - [`console`]: tailing the console file, pattern waits with a cursor;
//! - [`qmp`]: QEMU Machine Protocol commands (power button, quit);
//! - [`api_client`]: the host API ([`atoll_common::api`]) from outside;
//! - [`disk`]: the base image, overlays and raw copies, grubenv and byte
//!   edits on a raw image;
//! - [`cidata`]: NoCloud seed images (vfat or iso9660 labelled `CIDATA`);
//! - [`servers`]: servers on the host loopback for the guest to reach
//!   through user networking (cloud metadata, echo, files over HTTP);
//! - [`registry`]: a real OCI registry and busybox test images;
//! - [`token_registry`]: a registry that wants bearer tokens, with its
//!   token endpoint (also used by the runtime's host tests);
//! - [`update_repo`]: a signed update repository with a newer release;
//! - [`bench`]: the boot-time benchmark behind `qemu-tests bench`.
//!
//! The integration tests in `tests/` each boot their own VM.

pub mod api_client;
pub mod bench;
pub mod cidata;
pub mod console;
pub mod disk;
pub mod lines;
pub mod qmp;
pub mod registry;
pub mod servers;
pub mod token_registry;
pub mod update_repo;
pub mod vm;

pub use console::{Match, Pattern};
pub use vm::{
    DiskFormat, DiskSpec, Firmware, GuestFwd, NetUser, Ready, Vm, VmBuilder, VmError, METADATA_IP,
};
