#!/usr/bin/env bash
# Installs the Debian packages Atoll's build and tests need. Idempotent: it
# asks apt only for what is missing, and runs `apt-get update` only then.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
    qemu-system-x86   # boots the images (TCG)
    qemu-utils        # qemu-img: qcow2 output and test overlays
    ovmf              # UEFI firmware for QEMU
    grub-pc-bin       # GRUB i386-pc images (BIOS boot)
    grub-efi-amd64-bin  # GRUB x86_64-efi images (UEFI boot)
    cryptsetup-bin    # veritysetup: the slot's dm-verity hash tree
    dosfstools        # mkfs.vfat: the ESP
    mtools            # mcopy: files into the ESP without mounting
    e2fsprogs         # mke2fs, debugfs, e2fsck: the slot and DATA file systems (mke2fs ships in the image)
    kmod              # depmod: module dependency and alias tables
    cpio              # inspecting initramfs archives in tests
    genisoimage       # iso9660 NoCloud (CIDATA) seed volumes in the provisioning tests
    dnsmasq-base      # a real DHCP server for the DHCP client's peer test
    iproute2          # network namespaces and veth for that test
    skopeo            # reads the runtime's OCI image store in its store test
    docker-registry   # a real OCI registry for the runtime's pull tests
    openssl           # the token-auth pull test's signing key and certificate
    busybox-static    # a tiny root file system for the runtime's container tests
    ca-certificates   # the CA roots the image ships for pulls and updates over HTTPS
    runc              # the peer the runtime's OCI command line is compared with
    crun              # the other peer of the container lifecycle benchmark
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found. Install a Rust toolchain (https://rustup.rs) first." >&2
    exit 1
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} Debian packages present"
else
    echo "deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get update -q
    install=("${missing[@]}")
    # Debian 12's qemu-system-x86 (7.2) breaks with a newer qemu-utils from
    # backports; ask for the bookworm build of qemu-utils then.
    for i in "${!install[@]}"; do
        if [ "${install[$i]}" = qemu-system-x86 ]; then
            ver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
            if [ -n "$ver" ] && dpkg --compare-versions "$ver" ge 1:8; then
                install+=("qemu-utils/bookworm")
            fi
        fi
    done
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q \
        --no-install-recommends --allow-downgrades "${install[@]}"
fi

# The kernel package is fetched with `apt-get download` by image-build; that
# needs package lists, which a fresh machine may not have yet.
if ! apt-cache show linux-image-6.1.0-56-cloud-amd64 >/dev/null 2>&1; then
    echo "deps: refreshing package lists for the kernel download"
    "${sudo_cmd[@]}" apt-get update -q
fi
