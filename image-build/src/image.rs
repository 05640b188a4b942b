//! The whole disk build (`image-build disk`): the steps in order, their
//! progress lines, and `build.json`, the record of what was built.

use std::path::{Path, PathBuf};
use std::time::Instant;

use atoll_common::layout;

use crate::data::{self, DataError};
use crate::disk::{self, Disk, DiskError, DiskIds};
use crate::esp::{self, EspError};
use crate::initramfs::{self, InitramfsError};
use crate::kernel::{self, Fetched, KernelError, KernelPin};
use crate::keys::{self, KeysError};
use crate::libs::{LibsError, SharedLibs};
use crate::modules::{self, KernelModules, ModulesError};
use crate::slot::{self, SlotError};
use crate::tree::{Tree, TreeError};
use crate::{bios, ids};

/// The build's error: the failing step's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path} is missing{hint}")]
    MissingInput {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    UpdateRoot(#[from] KeysError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Modules(#[from] ModulesError),
    #[error(transparent)]
    Libs(#[from] LibsError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Bios(#[from] bios::BiosError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot write {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Debian's CA bundle (package ca-certificates).
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Inputs of `image-build disk` (absolute or relative to the current directory).
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Output directory (atoll.raw, atoll.qcow2, build.json, work/).
    pub out: PathBuf,
    /// Where the kernel package is cached.
    pub cache: PathBuf,
    /// The init binary (PID 1, both stages).
    pub init: PathBuf,
    pub atollctl: PathBuf,
    /// The atoll-runtime binary (OCI runtime CLI, registry pulls).
    pub runtime: PathBuf,
    /// The atoll-updater binary (the update agent PID 1 runs).
    pub updater: PathBuf,
    /// A static busybox, made into the preloaded image
    /// `localhost/atoll/busybox` (Debian package busybox-static).
    pub busybox: PathBuf,
    /// The CA roots shipped for registry pulls and updates (Debian's
    /// ca-certificates bundle).
    pub ca_bundle: PathBuf,
    /// mke2fs from the build host, shipped in the slot.
    pub mke2fs: PathBuf,
    /// The update root of trust (a keys directory's root.json), shipped
    /// in the slot as `/usr/lib/atoll/update-root.json`.
    pub update_root: PathBuf,
    pub qcow2: bool,
    /// The version the slot says it is (`VERSION=` in os-release,
    /// build.json's `version`); `None`: the binaries' own
    /// (`atoll_common::VERSION`). A test cuts a newer release from the same
    /// binaries with it.
    pub os_version: Option<String>,
    /// FOR TESTS ONLY: a fault the slot is built to have, written to
    /// [`layout::SLOT_TEST_FAULT`] (e.g. `never-ready`); `None` for every
    /// real build.
    pub test_fault: Option<String>,
}

/// `build.json`: what was built, from which inputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildInfo {
    /// Atoll version (`atoll_common::VERSION`).
    pub version: String,
    /// Short digest of the slot's content (os-release BUILD_ID).
    pub build_id: String,
    pub kernel_package: String,
    /// Debian package version of the kernel.
    pub kernel_version: String,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// sha256 of the slot image (ext4 + verity) written to ROOT-A and ROOT-B.
    pub slot_sha256: String,
    pub slot_size: u64,
    /// Bytes of the slot's ext4 file system (the verity superblock follows).
    pub fs_size: u64,
    pub verity_root_hash: String,
    pub verity_salt: String,
    /// Byte offset of the verity superblock in the slot (= `fs_size`).
    pub verity_hash_offset: u64,
    /// Bytes `[start, end)` of the slot that hold init's first data block
    /// (read by the kernel through dm-verity, never by GRUB).
    pub init_data_start: u64,
    pub init_data_end: u64,
    /// The disk image, relative to build.json.
    pub image: String,
    pub image_size: u64,
    pub image_sha256: String,
    /// The qcow2 image, relative to build.json, if one was made.
    pub qcow2: Option<String>,
}

/// Prints one line per step with its duration.
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { total, done: 0 }
    }

    /// Runs one step; `f` returns its result and a one-line summary.
    pub fn step<T, E>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<(T, String), E>,
    ) -> Result<T, E> {
        self.done += 1;
        let start = Instant::now();
        let res = f();
        let secs = start.elapsed().as_secs_f64();
        match res {
            Ok((v, summary)) => {
                println!(
                    "[{}/{}] {name}: {summary} ({secs:.1} s)",
                    self.done, self.total
                );
                Ok(v)
            }
            Err(e) => {
                println!(
                    "[{}/{}] {name}: failed ({secs:.1} s)",
                    self.done, self.total
                );
                Err(e)
            }
        }
    }
}

/// Human size: `27.1 MiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn require(what: &'static str, path: &Path, hint: &'static str) -> Result<(), Error> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::MissingInput {
            what,
            path: path.to_path_buf(),
            hint,
        })
    }
}

/// `image-build fetch-kernel`: makes sure the pinned package is cached.
pub fn fetch_kernel(cache: &Path) -> Result<(PathBuf, Fetched), Error> {
    let pin = KernelPin::pinned()?;
    Ok(kernel::fetch(&pin, cache)?)
}

fn os_version(opts: &DiskOptions) -> String {
    opts.os_version
        .clone()
        .unwrap_or_else(|| atoll_common::VERSION.to_string())
}

/// Builds the disk image and build.json into `opts.out`.
pub fn build_disk(opts: &DiskOptions) -> Result<BuildInfo, Error> {
    const BINARY_HINT: &str = " (build it with `cargo build --release -p atoll-init`)";
    require(
        "init binary",
        &opts.init,
        " (build it with scripts/build-image.sh, which links it statically)",
    )?;
    require("atollctl binary", &opts.atollctl, BINARY_HINT)?;
    require(
        "atoll-runtime binary",
        &opts.runtime,
        " (build it with `cargo build --release -p atoll-runtime`)",
    )?;
    require(
        "atoll-updater binary",
        &opts.updater,
        " (build it with `cargo build --release -p atoll-updater`)",
    )?;
    require("busybox", &opts.busybox, " (Debian package busybox-static)")?;
    require(
        "CA certificate bundle",
        &opts.ca_bundle,
        " (Debian package ca-certificates)",
    )?;
    require("mke2fs", &opts.mke2fs, " (Debian package e2fsprogs)")?;
    require(
        "update root of trust",
        &opts.update_root,
        " (make keys with `image-build keys init --dir DIR` and pass DIR/root.json, \
         or leave out --update-root for development keys)",
    )?;
    let (update_root, update_root_bytes) = keys::read_shipped_root(&opts.update_root)?;
    if update_root.expires <= atoll_updater::metadata::Time::now() {
        eprintln!(
            "image-build: warning: the update root of trust {} expired at {}; \
             hosts will not update until the repository offers a newer root",
            opts.update_root.display(),
            update_root.expires
        );
    }
    let out = &opts.out;
    let work = out.join("work");
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let mut p = Progress::new(if opts.qcow2 { 10 } else { 9 });
    let pin = KernelPin::pinned()?;

    // 1. Kernel package.
    let kernel = p.step("kernel", || -> Result<_, Error> {
        let (deb, fetched) = kernel::fetch(&pin, &opts.cache)?;
        let k = kernel::unpack(&deb, &work.join("kernel"))?;
        let how = match fetched {
            Fetched::Cached => "cached",
            Fetched::Downloaded => "downloaded",
        };
        let summary = format!(
            "{} {} ({how}), release {}",
            pin.package, pin.version, k.release
        );
        Ok((k, summary))
    })?;

    // 2. Module index of the whole kernel.
    let kmods = p.step("modules", || -> Result<_, Error> {
        let m = KernelModules::index(&kernel)?;
        let summary = format!(
            "{} modules in {}, shipping a subset",
            m.deps.len(),
            m.release
        );
        Ok((m, summary))
    })?;

    // 3. Initramfs.
    let initrd = work.join("initrd.img");
    p.step("initramfs", || -> Result<_, Error> {
        let t = Tree::create(&work.join("initramfs"))?;
        t.merged_usr()?;
        for d in ["dev", "proc", "sys", "run", "sysroot", "tmp"] {
            t.dir(d)?;
        }
        t.copy("init", &opts.init, 0o755)?;
        t.file(
            layout::INITRD_MARKER.trim_start_matches('/'),
            b"NAME=Atoll initramfs\n",
            0o644,
        )?;
        let init_libs = SharedLibs::of(&[&opts.init])?;
        if !init_libs.is_empty() {
            eprintln!(
                "image-build: warning: {} is dynamically linked: PID 1's exec after the \
                 switch root will read its loader and libraries from the slot (~130 ms of \
                 guest time under TCG); scripts/build-image.sh links it statically",
                opts.init.display()
            );
        }
        init_libs.install(&t)?;
        let n = kmods.install(modules::INITRAMFS_MODULES, t.root())?;
        t.normalize_modes()?;
        let len = initramfs::write(&t, &[initramfs::CONSOLE], &initrd)?;
        Ok(((), format!("initrd.img {}, {n} modules", size(len))))
    })?;

    // 4. The slot's root tree.
    let rootfs = Tree::create(&work.join("rootfs"))?;
    let build_id = p.step("root tree", || -> Result<_, Error> {
        slot::populate(
            &rootfs,
            &slot::RootfsInputs {
                init: &opts.init,
                atollctl: &opts.atollctl,
                runtime: &opts.runtime,
                updater: &opts.updater,
                busybox: &opts.busybox,
                ca_bundle: &opts.ca_bundle,
                mke2fs: &opts.mke2fs,
                vmlinuz: &kernel.vmlinuz,
                initrd: &initrd,
                kernel_release: &kernel.release,
                update_root: &update_root_bytes,
            },
        )?;
        let libs = SharedLibs::of(&[
            &opts.init,
            &opts.atollctl,
            &opts.runtime,
            &opts.updater,
            &opts.mke2fs,
        ])?;
        libs.install(&rootfs)?;
        if let Some(fault) = &opts.test_fault {
            rootfs.file(
                layout::SLOT_TEST_FAULT,
                format!("{fault}\n").as_bytes(),
                0o644,
            )?;
        }
        let n = kmods.install(modules::SLOT_MODULES, rootfs.root())?;
        let id = slot::finish_rootfs(&rootfs, &kernel.release, &os_version(opts))?;
        let mut summary = format!(
            "{n} modules, {} libraries, update root version {}, build id {id}",
            libs.len(),
            update_root.version
        );
        if let Some(fault) = &opts.test_fault {
            summary.push_str(&format!(", TEST FAULT {fault}: this slot fails on purpose"));
        }
        Ok((id, summary))
    })?;
    // The unpacked kernel is no longer needed (90 MB of modules).
    std::fs::remove_dir_all(&kernel.tree).map_err(io(&kernel.tree))?;

    // 5. Slot image: ext4 + dm-verity.
    let slot_img = work.join("slot.img");
    let (fs_size, verity, init_range) = p.step("slot image", || -> Result<_, Error> {
        // The build id is the tree's digest (finish_rootfs): no second
        // read of the whole tree.
        let fs = slot::mkext4(
            &rootfs,
            &slot_img,
            &ids::uuid("slot fs uuid", build_id.as_bytes()),
            &ids::uuid("slot fs hash seed", build_id.as_bytes()),
        )?;
        let init_bytes = std::fs::read(&opts.init).map_err(io(&opts.init))?;
        let range = slot::init_block(&slot_img, &init_bytes)?;
        let sha = slot::sha256_file(&slot_img)?;
        let v = slot::append_verity(&slot_img, &sha)?;
        let total = std::fs::metadata(&slot_img).map_err(io(&slot_img))?.len();
        slot::check_fits(total)?;
        let summary = format!(
            "ext4 {}, with verity {}, root hash {}",
            size(fs),
            size(total),
            v.root_hash
        );
        Ok(((fs, v, range), summary))
    })?;
    let slot_sha = slot::sha256_file(&slot_img)?;
    let slot_size = std::fs::metadata(&slot_img).map_err(io(&slot_img))?.len();

    // 6. GRUB images.
    let bios_boot = layout::partition(layout::LABEL_BIOS_BOOT).map_or(layout::MIB, |s| s.offset);
    let bios_room = layout::BIOS_BOOT_SIZE;
    let core_lba = bios_boot / disk::SECTOR;
    let (grub, mbr_code, core) = p.step("GRUB", || -> Result<_, Error> {
        let g = esp::grub_images(&work.join("grub"))?;
        let boot_img_path = Path::new(esp::GRUB_PC_DIR).join("boot.img");
        let boot_img = std::fs::read(&boot_img_path).map_err(io(&boot_img_path))?;
        let code = bios::mbr_code(&boot_img, core_lba)?;
        let core_raw = std::fs::read(&g.core).map_err(io(&g.core))?;
        let core = bios::patch_core_img(&core_raw, core_lba, bios_room)?;
        let efi_len = std::fs::metadata(&g.efi).map_err(io(&g.efi))?.len();
        let summary = format!(
            "BOOTX64.EFI {}, core.img {} at LBA {core_lba}",
            size(efi_len),
            size(core.len() as u64)
        );
        Ok(((g, code, core), summary))
    })?;

    // 7. ESP.
    let esp_spec = layout::partition(layout::LABEL_ESP).copied();
    let esp_img = work.join("esp.img");
    p.step("ESP", || -> Result<_, Error> {
        let files = esp::esp_files(&grub.efi, &verity.root_hash)?;
        let (esp_offset, esp_size) = esp_spec.map_or((0, layout::ESP_SIZE), |s| (s.offset, s.size));
        esp::build_fat(
            &esp_img,
            esp_size,
            ids::fat_volume_id(&slot_sha),
            esp_offset / disk::SECTOR,
            &files,
            &work.join("esp-files"),
        )?;
        Ok((
            (),
            format!("FAT32 {}, {} files", size(esp_size), files.len()),
        ))
    })?;

    // 8. DATA.
    let data_img = work.join("data.img");
    p.step("DATA", || -> Result<_, Error> {
        data::mke2fs(
            &data_img,
            layout::DATA_INITIAL_SIZE,
            &ids::uuid("data fs uuid", &slot_sha),
            &ids::uuid("data fs hash seed", &slot_sha),
        )?;
        Ok(((), format!("ext4 {}", size(layout::DATA_INITIAL_SIZE))))
    })?;

    // 9. The disk.
    let raw = out.join("atoll.raw");
    let image_sha = p.step("disk", || -> Result<_, Error> {
        let ids = DiskIds::derive(&slot_sha);
        let mut d = Disk::create(&raw)?;
        d.write_gpt(&ids)?;
        d.write_mbr(&mbr_code)?;
        d.write_bytes(layout::LABEL_BIOS_BOOT, "core.img", &core)?;
        let mut written = d.write_file(layout::LABEL_ESP, &esp_img)?;
        written += d.write_file(layout::LABEL_ROOT_A, &slot_img)?;
        written += d.write_file(layout::LABEL_ROOT_B, &slot_img)?;
        written += d.write_file(layout::LABEL_DATA, &data_img)?;
        d.sync()?;
        drop(d);
        disk::verify_gpt(&raw, &ids)?;
        let sha = hex::encode(slot::sha256_file(&raw)?);
        let summary = format!(
            "atoll.raw {} ({} of data), sha256 {sha}",
            size(layout::DISK_SIZE),
            size(written + core.len() as u64)
        );
        Ok((sha, summary))
    })?;

    // 10. qcow2.
    let qcow2 = if opts.qcow2 {
        let path = out.join("atoll.qcow2");
        p.step("qcow2", || -> Result<_, Error> {
            let len = disk::qcow2(&raw, &path)?;
            Ok(((), format!("atoll.qcow2 {}", size(len))))
        })?;
        Some("atoll.qcow2".to_string())
    } else {
        // A qcow2 from an earlier build would no longer match atoll.raw.
        let stale = out.join("atoll.qcow2");
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io(&stale))?;
        }
        None
    };

    let info = BuildInfo {
        version: os_version(opts),
        build_id,
        kernel_package: pin.package.clone(),
        kernel_version: pin.version.clone(),
        kernel_release: kernel.release.clone(),
        slot_sha256: hex::encode(slot_sha),
        slot_size,
        fs_size,
        verity_root_hash: verity.root_hash.clone(),
        verity_salt: verity.salt.clone(),
        verity_hash_offset: verity.hash_offset,
        init_data_start: init_range.0,
        init_data_end: init_range.1,
        image: "atoll.raw".into(),
        image_size: layout::DISK_SIZE,
        image_sha256: image_sha,
        qcow2,
    };
    let json_path = out.join("build.json");
    let json = serde_json::to_string_pretty(&info).map_err(|source| Error::Json {
        path: json_path.clone(),
        source,
    })?;
    std::fs::write(&json_path, json + "\n").map_err(io(&json_path))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(12), "12 B");
        assert_eq!(size(28_416_000), "27.1 MiB");
        assert_eq!(size(layout::DISK_SIZE), "1.2 GiB");
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let opts = DiskOptions {
            out: std::env::temp_dir().join("image-build-never"),
            cache: std::env::temp_dir(),
            init: PathBuf::from("/nonexistent/init"),
            atollctl: PathBuf::from("/nonexistent/atollctl"),
            runtime: PathBuf::from("/nonexistent/atoll-runtime"),
            updater: PathBuf::from("/nonexistent/atoll-updater"),
            busybox: PathBuf::from("/bin/busybox"),
            ca_bundle: PathBuf::from(DEFAULT_CA_BUNDLE),
            mke2fs: PathBuf::from("/usr/sbin/mke2fs"),
            update_root: PathBuf::from("/nonexistent/root.json"),
            qcow2: false,
            os_version: None,
            test_fault: None,
        };
        let err = build_disk(&opts).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/init")
                && err.to_string().contains("scripts/build-image.sh"),
            "{err}"
        );
    }

    #[test]
    fn an_update_root_that_is_not_a_root_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("binary");
        std::fs::write(&binary, b"\x7fELF").unwrap();
        let mut opts = DiskOptions {
            out: tmp.path().join("out"),
            cache: tmp.path().join("cache"),
            init: binary.clone(),
            atollctl: binary.clone(),
            runtime: binary.clone(),
            updater: binary.clone(),
            busybox: PathBuf::from("/bin/busybox"),
            ca_bundle: PathBuf::from(DEFAULT_CA_BUNDLE),
            mke2fs: binary,
            update_root: tmp.path().join("missing.json"),
            qcow2: false,
            os_version: None,
            test_fault: None,
        };
        let err = build_disk(&opts).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "update root of trust {} is missing (make keys with `image-build keys init",
                opts.update_root.display()
            )),
            "{err}"
        );
        // A targets.json is not a root: refused before anything is built.
        let keys = crate::keys::KeyDir::new(tmp.path().join("keys"));
        crate::keys::init(
            &keys,
            atoll_updater::metadata::Time::now(),
            keys::ROOT_EXPIRY,
        )
        .unwrap();
        opts.update_root = keys.dir.join("keys");
        assert!(build_disk(&opts).is_err());
        opts.update_root = tmp.path().join("1.targets.json");
        std::fs::write(
            &opts.update_root,
            br#"{"signed": {"_type": "targets", "spec_version": "1.0.31", "version": 1,
                "expires": "2030-01-01T00:00:00Z", "targets": {}}, "signatures": []}"#,
        )
        .unwrap();
        let err = build_disk(&opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a valid root of trust", opts.update_root.display())
        );
        let chain = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            chain
                .as_deref()
                .is_some_and(|c| c.starts_with("1.targets.json: ")),
            "{chain:?}"
        );
        assert!(!opts.out.exists());
        // A real root passes this check.
        assert!(keys::read_shipped_root(&keys.root_path()).is_ok());
    }
}
