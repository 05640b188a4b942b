#!/usr/bin/env bash
# Where a module load's guest time goes: boots the built image's kernel
# under QEMU (TCG, -icount shift=0: 1 ns per guest instruction) with a
# throwaway initramfs holding static busybox and the modules stage 1 loads
# on a virtio disk, and loads them in stage 1's order under ftrace's
# function_graph tracer. Prints, per module, its size, the whole
# load_module and its signature check (module_sig_check), in guest µs.
# docs/BENCHMARKS.md ("Where the remaining ms go") quotes it.
#
#   scripts/trace-module-loads.sh        (after scripts/build-image.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/atoll/work
kernel=$work/rootfs/boot/vmlinuz
mods=$(echo "$work"/initramfs/usr/lib/modules/*/kernel)
busybox=/bin/busybox
for f in "$kernel" "$mods" "$busybox"; do
    [[ -e $f ]] || { echo "$0: $f is missing (scripts/build-image.sh; busybox-static)" >&2; exit 1; }
done
file -L "$busybox" | grep -q 'statically linked' || { echo "$0: $busybox is not static (apt-get install busybox-static)" >&2; exit 1; }

# Stage 1's modules for a virtio disk, in its order: the CPU's SHA-256
# first (coldplug takes CPU feature drivers first), dependencies first.
order="../arch/x86/crypto/sha256-ssse3 virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev
virtio/virtio_pci block/virtio_blk md/dm-mod md/dm-bufio ../lib/reed_solomon/reed_solomon
md/dm-verity"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,proc,sys,m}
cp "$busybox" "$root/bin/busybox"
names=""
for m in $order; do
    cp "$mods/drivers/$m.ko" "$root/m/"
    names="$names $(basename "$m")"
done
cat > "$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tracefs tracefs /sys/kernel/tracing
cd /sys/kernel/tracing
echo load_module > set_graph_function
echo 2 > max_graph_depth
echo function_graph > current_tracer
for m in$names; do
    echo > trace
    echo 1 > tracing_on
    insmod /m/\$m.ko
    echo 0 > tracing_on
    size=\$(wc -c < /m/\$m.ko)
    sig=\$(grep 'module_sig_check();' trace | head -n 1 | sed 's/.*[^0-9.]\([0-9.]*\) us.*/\1/')
    total=\$(grep -E '^ *[0-9]+\).*\|  }\$' trace | tail -n 1 | sed 's/.*[^0-9.]\([0-9.]*\) us.*/\1/')
    echo "atoll-trace \$m \$size \$total \$sig"
done
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$tmp/initrd.img"

# The machine and CPU of qemu-tests' VMs (qemu-tests/src/vm.rs).
timeout 600 qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 512 -icount shift=0 \
    -nodefaults -display none -serial "file:$tmp/console" -no-reboot \
    -kernel "$kernel" -initrd "$tmp/initrd.img" -append "console=ttyS0 quiet panic=-1"
printf '%-24s %8s %16s %22s\n' module KiB "load_module µs" "module_sig_check µs"
awk '/^atoll-trace/ { printf "%-24s %8d %16s %22s\n", $2, $3 / 1024, $4, $5; n++ }
     END { if (n == 0) { print "no figures: see the console log" > "/dev/stderr"; exit 1 } }' "$tmp/console"
