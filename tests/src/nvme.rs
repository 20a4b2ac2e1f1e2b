//! Two emulated NVMe controllers in L1 for the passthrough cases: raw image files on this
//! host, each controller behind an L1 root port of its own, so L1 sees them at fixed BDFs
//! (A: 0000:01:00.0, B: 0000:02:00.0; the case scripts look them up by root port anyway).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::RigError;

/// Size of each image: room for the 64 MiB read benchmark.
pub const NVME_IMAGE_BYTES: u64 = 80 << 20;
/// The byte that fills the first MiB of each image.
pub const NVME_PATTERN: u8 = b'P';
const MIB: u64 = 1 << 20;

static IMAGE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Shell helpers for case scripts (prepend them):
/// - `$A`, `$B`: the controllers' L1 BDFs, found behind root ports 00:01.0 and 00:02.0;
/// - `driver_of BDF`, `unbind BDF`, `bind_vfio BDF`, `bind_nvme BDF` (the binds are no-ops
///   if BDF has that driver already, and say so on failure);
/// - `fill_md5 CHAR`: the md5 of a MiB of CHAR, as the guest's `nvme` check prints it;
/// - `run_vm NAME ARGS...`: `/aperture run` of the test guest (`--timeout 60`) with ARGS,
///   its output after it ends with each line prefixed `NAME: `, then `l1: NAME status=N`;
/// - `start_vm NAME ARGS...`: the same in the background (`--timeout 120`, `--shutdown-grace
///   0` so SIGTERM stops it hard, pid `$vm_pid`);
///   `wait_log NAME TEXT SECS` waits until its output holds TEXT (fails after SECS or if it
///   ended); `stop_vm NAME` sends it SIGTERM (SIGKILL 20 s later) and prints as `run_vm`;
/// - `host_disk SERIAL`: L1's block device of a controller bound to nvme (waits 30 s).
pub const NVME_PRELUDE: &str = r#"
dev_behind() {
    for d in /sys/bus/pci/devices/0000:00:$1.0/0000:??:??.?; do [ -e "$d" ] && basename "$d"; done
}
A=$(dev_behind 01) B=$(dev_behind 02)
driver_of() {
    link=$(readlink "/sys/bus/pci/devices/$1/driver") && basename "$link" || echo none
}
unbind() {
    [ ! -e "/sys/bus/pci/devices/$1/driver" ] || echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"
}
bind_to() {
    [ "$(driver_of "$1")" = "$2" ] && return 0
    unbind "$1"
    echo "$3" > "/sys/bus/pci/devices/$1/driver_override"
    echo "$1" > /sys/bus/pci/drivers_probe
    [ "$(driver_of "$1")" = "$2" ] || { echo "l1: error: $1 has $(driver_of "$1"), not $2"; return 1; }
}
bind_vfio() { bind_to "$1" vfio-pci vfio-pci; }
bind_nvme() { bind_to "$1" nvme ""; }
fill_md5() { dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' "$1" | md5sum | cut -d' ' -f1; }
run_vm() {
    name=$1
    shift
    /aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60 "$@" \
        > "/tmp/$name.log" 2>&1
    st=$?
    sed "s/^/$name: /" "/tmp/$name.log"
    echo "l1: $name status=$st"
    return $st
}
start_vm() {
    name=$1
    shift
    /aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 120 \
        --shutdown-grace 0 "$@" > "/tmp/$name.log" 2>&1 &
    vm_pid=$!
}
wait_log() {
    n=0
    until grep -q "$2" "/tmp/$1.log" 2>/dev/null; do
        [ $n -lt $(($3 * 10)) ] && kill -0 "$vm_pid" 2>/dev/null || return 1
        sleep 0.1; n=$((n + 1))
    done
}
stop_vm() {
    kill -TERM "$vm_pid"
    (sleep 20; kill -KILL "$vm_pid" 2>/dev/null) &
    killer=$!
    wait "$vm_pid"
    st=$?
    kill "$killer" 2>/dev/null
    sed "s/^/$1: /" "/tmp/$1.log"
    echo "l1: $1 status=$st"
}
host_disk() {
    n=0
    while [ $n -lt 300 ]; do
        for d in /sys/block/nvme*n1; do
            grep -qs "$1" "$d/device/serial" && [ -b "/dev/${d##*/}" ] && { echo "/dev/${d##*/}"; return 0; }
        done
        sleep 0.1; n=$((n + 1))
    done
    return 1
}
"#;

/// The `nvme-host-bench` case: a 64 MiB direct read of A in L1 (bound to nvme for it), then
/// in a nested guest with A passed through. Prints `l1: host-bench: 64MiB start= end=
/// status=`, the guest's `CHECK nvmebench: ...` and `l1: status=<aperture's>`; leaves A
/// bound to vfio-pci.
pub fn nvme_bench_script() -> String {
    format!(
        r#"{NVME_PRELUDE}
bind_nvme "$A" || exit 1
disk=$(host_disk aperture-a) || {{ echo "l1: error: no block device for A"; bind_vfio "$A"; exit 1; }}
start=$(cut -d' ' -f1 /proc/uptime)
dd if="$disk" of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
st=$?
end=$(cut -d' ' -f1 /proc/uptime)
echo "l1: host-bench: 64MiB start=$start end=$end status=$st"
bind_vfio "$A" || exit 1
# The same boot without the read, for the VM exits the read itself costs (-v logs the count).
/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60 --device "$A" \
    --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=nvmebench=0' 2>&1 \
    | grep -e 'CHECK nvmebench' -e 'vCPU exits' | sed 's/^/l1: baseline: /'
/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60 --device "$A" \
    --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=nvmebench' 2>/tmp/bench-vmm.log
status=$?
grep 'vCPU exits' /tmp/bench-vmm.log | sed 's/^/l1: bench: /'
echo "l1: status=$status"
exit $status
"#
    )
}

/// One emulated controller and its image.
#[derive(Debug)]
pub struct NvmeDisk {
    /// NVMe serial number, as L1 and the guest read it (`/sys/block/*/device/serial`).
    pub serial: &'static str,
    /// Slot of the L1 root port (`0000:00:<slot>.0`) the controller sits behind.
    pub root_port: u8,
    /// MSI-X table and PBA in a BAR of their own instead of inside BAR0.
    pub exclusive_msix_bar: bool,
    /// The raw image on this host.
    pub image: PathBuf,
}

/// Controller A (QEMU's default: MSI-X table in BAR0 with the registers) and B
/// (`msix-exclusive-bar=on`). Their images are removed on drop.
#[derive(Debug)]
pub struct NvmeDisks {
    /// A, then B.
    pub disks: [NvmeDisk; 2],
}

impl NvmeDisks {
    /// Creates both images in `dir`: sparse, [`NVME_IMAGE_BYTES`] long, the first MiB
    /// [`NVME_PATTERN`].
    pub fn create(dir: &Path) -> Result<Self, RigError> {
        fs::create_dir_all(dir).map_err(|source| RigError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let run = IMAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let image = |name: &str| dir.join(format!("nvme-{}-{run}-{name}.img", std::process::id()));
        let disks = Self {
            disks: [
                NvmeDisk {
                    serial: "aperture-a",
                    root_port: 1,
                    exclusive_msix_bar: false,
                    image: image("a"),
                },
                NvmeDisk {
                    serial: "aperture-b",
                    root_port: 2,
                    exclusive_msix_bar: true,
                    image: image("b"),
                },
            ],
        };
        for disk in &disks.disks {
            write_image(&disk.image)?;
        }
        Ok(disks)
    }

    /// L1's QEMU arguments: a root port, a drive and a controller per disk.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (index, disk) in self.disks.iter().enumerate() {
            let slot = disk.root_port;
            // QEMU option values escape commas by doubling them.
            let file = disk.image.to_string_lossy().replace(',', ",,");
            let msix = if disk.exclusive_msix_bar { ",msix-exclusive-bar=on" } else { "" };
            args.extend([
                "-device".into(),
                format!("pcie-root-port,id=rp{index},bus=pcie.0,addr={slot:#x},chassis={slot},slot={slot}"),
                "-drive".into(),
                format!("file={file},if=none,id=nvme{index},format=raw"),
                "-device".into(),
                format!(
                    "nvme,serial={},drive=nvme{index},bus=rp{index}{msix},id={}",
                    disk.serial,
                    NvmeDisks::device_id(index)
                ),
            ]);
        }
        args
    }

    /// The QMP commands that put controller `index` back after a `device_del`, as
    /// [`Self::qemu_args`] made it (same id, root port, serial, image). Whether QEMU deletes
    /// a `-drive if=none` drive with its device has changed between versions, so the image
    /// is opened as a block node of the drive's name first; where the drive is still there
    /// (QEMU 10.0 keeps it) that command fails ("conflicting with a device id") and the
    /// controller takes the drive.
    pub fn qmp_readd(&self, index: usize) -> Vec<String> {
        let Some(disk) = self.disks.get(index) else { return Vec::new() };
        // JSON strings: the path has no quotes or backslashes (a temporary directory).
        let file = disk.image.to_string_lossy();
        let msix = if disk.exclusive_msix_bar { r#","msix-exclusive-bar":true"# } else { "" };
        vec![
            format!(
                r#"{{"execute":"blockdev-add","arguments":{{"driver":"raw","node-name":"nvme{index}","file":{{"driver":"file","filename":"{file}"}}}}}}"#
            ),
            format!(
                r#"{{"execute":"device_add","arguments":{{"driver":"nvme","id":"{}","bus":"rp{index}","serial":"{}","drive":"nvme{index}"{msix}}}}}"#,
                NvmeDisks::device_id(index),
                disk.serial
            ),
        ]
    }

    /// The QEMU device id of controller `index` (for QMP's `device_del`): `nvme-a`, `nvme-b`.
    pub fn device_id(index: usize) -> &'static str {
        if index == 0 {
            "nvme-a"
        } else {
            "nvme-b"
        }
    }

    /// The byte filling MiB `mib` of disk `index`'s image, `None` if it is not uniform.
    pub fn fill_of(&self, index: usize, mib: u64) -> Result<Option<u8>, RigError> {
        let Some(disk) = self.disks.get(index) else { return Ok(None) };
        let path = &disk.image;
        let io = |action, source| RigError::Io { action, path: path.clone(), source };
        let mut file = File::open(path).map_err(|e| io("open", e))?;
        file.seek(SeekFrom::Start(mib * MIB)).map_err(|e| io("seek in", e))?;
        let mut buf = vec![0u8; MIB as usize];
        file.read_exact(&mut buf).map_err(|e| io("read", e))?;
        let first = buf[0];
        Ok(buf.iter().all(|&b| b == first).then_some(first))
    }
}

impl Drop for NvmeDisks {
    fn drop(&mut self) {
        for disk in &self.disks {
            let _ = fs::remove_file(&disk.image);
        }
    }
}

fn write_image(path: &Path) -> Result<(), RigError> {
    let io = |action, source| RigError::Io { action, path: path.to_path_buf(), source };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io("create", e))?;
    file.write_all(&[NVME_PATTERN; MIB as usize]).map_err(|e| io("write", e))?;
    file.set_len(NVME_IMAGE_BYTES).map_err(|e| io("resize", e))
}

/// Seconds between `start=` and `end=` on a benchmark line (`... start=2.62 end=2.93 ...`).
pub fn bench_seconds(line: &str) -> Option<f64> {
    let value = |key: &str| -> Option<f64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(key))?.parse().ok()
    };
    Some(value("end=")? - value("start=")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_args_and_prelude_agree() {
        let dir = std::env::temp_dir().join(format!("aperture-e2e-nvme-{}", std::process::id()));
        let disks = NvmeDisks::create(&dir).unwrap();
        let args = disks.qemu_args().join(" ");
        assert!(args.contains("pcie-root-port,id=rp0,bus=pcie.0,addr=0x1,chassis=1,slot=1"));
        assert!(args.contains(
            "nvme,serial=aperture-b,drive=nvme1,bus=rp1,msix-exclusive-bar=on,id=nvme-b"
        ));
        for disk in &disks.disks {
            // The prelude finds each controller behind its root port.
            assert!(NVME_PRELUDE.contains(&format!("dev_behind {:02x}", disk.root_port)));
            assert_eq!(fs::metadata(&disk.image).unwrap().len(), NVME_IMAGE_BYTES);
        }
        assert_eq!(disks.fill_of(0, 0).unwrap(), Some(NVME_PATTERN));
        assert_eq!(disks.fill_of(1, 1).unwrap(), Some(0));
        // Put back after device_del as -device made it: the image as node `nvmeN`, then
        // the controller with the same id, port and serial on it.
        let readd = disks.qmp_readd(1);
        assert_eq!(readd.len(), 2);
        let file = disks.disks[1].image.display().to_string();
        assert!(readd[0].starts_with(r#"{"execute":"blockdev-add","#), "{}", readd[0]);
        assert!(readd[0].contains(r#""node-name":"nvme1""#) && readd[0].contains(&file));
        assert_eq!(
            readd[1],
            r#"{"execute":"device_add","arguments":{"driver":"nvme","id":"nvme-b","bus":"rp1","serial":"aperture-b","drive":"nvme1","msix-exclusive-bar":true}}"#
        );
        assert!(disks.qmp_readd(2).is_empty());
        let image = disks.disks[0].image.clone();
        drop(disks);
        assert!(!image.exists());
        let _ = fs::remove_dir(&dir);
    }

    #[test]
    fn bench_line_seconds() {
        let seconds = bench_seconds("CHECK nvmebench: 64MiB start=2.62 end=2.93 status=0");
        assert!((seconds.unwrap() - 0.31).abs() < 1e-9);
        assert_eq!(bench_seconds("start=1.0"), None);
    }
}
