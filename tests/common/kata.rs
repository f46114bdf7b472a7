//! Kata Containers' argument list, as its StratoVirt driver sends it (docs/container-runtimes.md),
//! for the tests that start Nimbus the way Kata does: with its tap inherited as fd 3.

use std::path::Path;

/// Kata's kernel parameters (its StratoVirt driver's, then the microvm ones); tests append
/// their own, which win.
pub const KATA_PARAMS: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
    i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k \
    cryptomgr.notests net.ifnames=0 pci=lastbus=0 console=hvc0 console=hvc1 debug panic=1 \
    nr_cpus=1 scsi_mod.scan=none agent.log=debug reboot=k panic=1 net.ifnames=0 pci=off \
    iommu=off acpi=off quiet 8250.nr_uarts=0";

/// The tag Kata gives its virtio-fs share, which its agent mounts.
pub const KATA_FS_TAG: &str = "kataShared";

/// What changes from one Kata sandbox to the next.
pub struct KataSandbox<'a> {
    /// `-kernel`.
    pub kernel: &'a Path,
    /// `-m`, in MiB.
    pub mem_mib: u32,
    /// What follows [`KATA_PARAMS`] in `-append`.
    pub append: &'a str,
    /// The QMP socket.
    pub qmp: &'a Path,
    /// The read-only root disk.
    pub rootfs: &'a Path,
    /// `-machine ...,mem-share=on` (Kata asks for it with virtio-fs).
    pub mem_share: bool,
    /// The vsock `-device` value, if any (Kata's is `vhost-vsock-device,...,vhostfd=`).
    pub vsock: Option<String>,
    /// The socket virtiofsd listens on (Kata's `<dir>/virtiofs_kata.socket`), if any: Kata's
    /// `-chardev socket,id=virtio_fs,...` and `-device vhost-user-fs-device,...` with tag
    /// [`KATA_FS_TAG`], last, as Kata sends them. virtiofsd needs `mem_share`.
    pub virtio_fs: Option<&'a Path>,
}

impl KataSandbox<'_> {
    /// The arguments in Kata's order; the tap is `fds=3`.
    pub fn args(&self) -> Vec<String> {
        let machine = if self.mem_share {
            "type=microvm,dump-guest-core=off,mem-share=on"
        } else {
            "type=microvm,dump-guest-core=off"
        };
        let mut args: Vec<String> = [
            "-name",
            "sandbox-0123456789abcdef",
            "-uuid",
            "6d6c6b92-3d3e-4a60-9d3c-6f3bfae58d20",
            "-smp",
            "1",
            "-m",
            &self.mem_mib.to_string(),
            "-kernel",
            &self.kernel.display().to_string(),
            "-append",
            &format!("{KATA_PARAMS} {}", self.append),
            "-qmp",
            &format!("unix:{},server,nowait", self.qmp.display()),
            "-D",
            "-disable-seccomp",
            "-machine",
            machine,
            "-object",
            "rng-random,id=objrng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-device,rng=objrng0,id=virtio-rng0",
            "-drive",
            &format!(
                "id=rootfs,file={},readonly=on,direct=off",
                self.rootfs.display()
            ),
            "-device",
            "virtio-blk-device,drive=rootfs,id=virtio-blk0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(vsock) = &self.vsock {
            args.extend(["-device".to_string(), vsock.clone()]);
        }
        args.extend(
            [
                "-netdev",
                "tap,id=eth0,fds=3",
                "-device",
                "virtio-net-device,netdev=eth0,id=eth0,mac=52:54:00:12:34:56",
            ]
            .map(String::from),
        );
        if let Some(socket) = self.virtio_fs {
            args.extend(virtio_fs_args(socket));
        }
        args
    }
}

/// Kata's virtio-fs flags for the virtiofsd socket `socket`, exactly as it writes them
/// (`server,nowait` included, although the VMM connects to virtiofsd).
pub fn virtio_fs_args(socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!(
            "socket,id=virtio_fs,path={},server,nowait",
            socket.display()
        ),
        "-device".into(),
        format!("vhost-user-fs-device,chardev=virtio_fs,tag={KATA_FS_TAG},id=virtio-fs0"),
    ]
}
