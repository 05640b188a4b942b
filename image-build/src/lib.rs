//! `image-build` builds Atoll's disk image from the pinned Debian kernel and
//! the workspace's binaries, as an ordinary user: no root, no loop devices,
//! no mounts (docs/boot.md describes the result).
//!
//! The steps ([`image::build_disk`]), each in its own module:
//!
//! - [`kernel`]: fetch the kernel package (`apt-get download`), check its
//!   sha256, unpack it;
//! - [`modules`]: the modules Atoll ships and their dependency closure,
//!   indexed with depmod;
//! - [`libs`]: the shared libraries of the shipped binaries (`ldd`);
//! - [`initramfs`]: a deterministic cpio newc writer, gzip;
//! - [`slot`]: the root tree, its ext4 image and dm-verity hash tree;
//! - [`grubcfg`], [`esp`], [`bios`]: GRUB's config, images, the FAT ESP and
//!   the BIOS boot sector patching;
//! - [`data`]: the empty ext4 DATA file system;
//! - [`disk`]: the GPT and the sparse disk file, qcow2.
//!
//! Updates (docs/updates.md): [`keys`] makes and rotates the signing keys
//! of an update repository; [`release`] turns a built slot image into a
//! signed release in it.
//!
//! Containers: [`ociimage`] writes the busybox image archives; [`sign`]
//! signs image manifest digests for containers pinned to a
//! `signature_key`.
//!
//! The same inputs give the same bytes: every identifier is derived from
//! the inputs ([`ids`]) and every time stamp is fixed.

// Tests unwrap freely: a panic there is a test failure with its message.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bios;
pub mod data;
pub mod disk;
pub mod esp;
pub mod grubcfg;
pub mod ids;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod keys;
pub mod libs;
pub mod modules;
pub mod ociimage;
pub mod release;
pub mod sign;
pub mod slot;
pub mod tool;
pub mod tree;
pub mod workspace;

pub use image::{build_disk, BuildInfo, DiskOptions, Error};
