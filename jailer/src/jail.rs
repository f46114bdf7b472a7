//! The jail directory, `<chroot-base>/<id>/root`: the exec file and each `--source` under its
//! base name (hard-linked; the exec file is copied and a source bind-mounted read-only when
//! it lives on another file system), and the device nodes Nimbus needs, owned by the VM's
//! uid/gid, and an empty `/proc` (the jailed process mounts its own procfs there). The jail root itself belongs to the uid so Nimbus can create its sockets there.

use crate::error::JailError;
use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, MetadataExt};
use std::path::{Path, PathBuf};

/// The device nodes Nimbus opens: KVM, tap devices and its random numbers.
pub const DEVICE_NODES: [&str; 3] = ["/dev/kvm", "/dev/net/tun", "/dev/urandom"];

/// A file on another file system than the jail, to bind-mount read-only over `target` once the
/// jailed process has its own mount namespace.
#[derive(Debug, Clone)]
pub struct PendingBind {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// A jail the jailer made; [`Jail::remove`] deletes `<chroot-base>/<id>` again.
#[derive(Debug)]
pub struct Jail {
    /// `<chroot-base>/<id>`: what the jailer made and removes.
    pub dir: PathBuf,
    /// `<chroot-base>/<id>/root`: the new `/`.
    pub root: PathBuf,
    /// The exec file's name in the jail root.
    pub exec_name: PathBuf,
    pub binds: Vec<PendingBind>,
}

impl Jail {
    /// Makes and fills the jail. On failure what was made is removed; a jail that exists
    /// already is refused and left alone.
    pub fn create(
        chroot_base: &Path,
        id: &str,
        exec_file: &Path,
        sources: &[PathBuf],
        uid: u32,
        gid: u32,
    ) -> Result<Jail, JailError> {
        let exec_name = base_name(exec_file)?;
        let meta = std::fs::metadata(exec_file)
            .map_err(|e| JailError::path("find exec file", exec_file, e))?;
        if !meta.is_file() {
            return Err(JailError::path(
                "use exec file",
                exec_file,
                ErrorKind::InvalidInput.into(),
            ));
        }
        std::fs::create_dir_all(chroot_base)
            .map_err(|e| JailError::path("create chroot base", chroot_base, e))?;
        let dir = chroot_base.join(id);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(JailError::JailExists { path: dir })
            }
            Err(e) => return Err(JailError::path("create jail", dir, e)),
            Ok(()) => {}
        }
        let mut jail = Jail {
            root: dir.join("root"),
            dir,
            exec_name,
            binds: Vec::new(),
        };
        match jail.fill(exec_file, sources, uid, gid) {
            Ok(()) => Ok(jail),
            Err(e) => {
                jail.remove();
                Err(e)
            }
        }
    }

    fn fill(
        &mut self,
        exec_file: &Path,
        sources: &[PathBuf],
        uid: u32,
        gid: u32,
    ) -> Result<(), JailError> {
        let root = self.root.clone();
        std::fs::create_dir(&root).map_err(|e| JailError::path("create jail root", &root, e))?;
        chown(&root, Some(uid), Some(gid))
            .map_err(|e| JailError::path("give the jail root to the uid", &root, e))?;
        let proc_dir = root.join("proc");
        std::fs::create_dir(&proc_dir)
            .map_err(|e| JailError::path("create directory", &proc_dir, e))?;
        let exec_target = root.join(&self.exec_name);
        if let Err(e) = std::fs::hard_link(exec_file, &exec_target) {
            if e.raw_os_error() != Some(libc::EXDEV) {
                return Err(JailError::path("link exec file into", exec_target, e));
            }
            std::fs::copy(exec_file, &exec_target)
                .map_err(|e| JailError::path("copy exec file into", &exec_target, e))?;
        }
        for source in sources {
            let target = root.join(base_name(source)?);
            if target.exists() {
                return Err(JailError::path(
                    "expose source as",
                    target,
                    ErrorKind::AlreadyExists.into(),
                ));
            }
            if let Err(e) = std::fs::hard_link(source, &target) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(JailError::path("link source", source, e));
                }
                std::fs::File::create(&target)
                    .map_err(|e| JailError::path("create bind-mount target", &target, e))?;
                self.binds.push(PendingBind {
                    source: source.clone(),
                    target,
                });
            }
        }
        for node in DEVICE_NODES {
            make_device_node(&root, node, uid, gid)?;
        }
        Ok(())
    }

    /// Deletes `<chroot-base>/<id>` and everything in it (never the sources: hard links are
    /// only unlinked).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last component of `path`, which must have one.
fn base_name(path: &Path) -> Result<PathBuf, JailError> {
    path.file_name().map(PathBuf::from).ok_or_else(|| {
        JailError::path(
            "take the file name of",
            path,
            ErrorKind::InvalidInput.into(),
        )
    })
}

/// Makes `<root><host_node>` a character device with the host node's numbers, mode 0600, owned
/// by uid/gid.
fn make_device_node(root: &Path, host_node: &str, uid: u32, gid: u32) -> Result<(), JailError> {
    let host = std::fs::metadata(host_node)
        .map_err(|e| JailError::path("find host device node", host_node, e))?;
    let target = root.join(host_node.trim_start_matches('/'));
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| JailError::path("create directory", dir, e))?;
    }
    let c_target = CString::new(target.as_os_str().as_bytes()).map_err(|_| {
        JailError::path(
            "create device node",
            &target,
            ErrorKind::InvalidInput.into(),
        )
    })?;
    // SAFETY: mknod reads the NUL-terminated path, which lives through the call.
    let rc = unsafe { libc::mknod(c_target.as_ptr(), libc::S_IFCHR | 0o600, host.rdev()) };
    if rc == -1 {
        return Err(JailError::path(
            "create device node",
            target,
            std::io::Error::last_os_error(),
        ));
    }
    chown(&target, Some(uid), Some(gid))
        .map_err(|e| JailError::path("give the device node to the uid", target, e))
}
