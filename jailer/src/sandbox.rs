//! What the jailed process does to itself between fork and exec, in this order:
//! close inherited descriptors, new mount and IPC namespaces, join the cgroups, (daemonize),
//! private mounts, the jail bound on itself, read-only bind mounts of sources, pivot_root into
//! the jail and detach the old root, a procfs of the new PID namespace, rlimits, no_new_privs, an empty capability bounding set,
//! setgroups/setgid/setuid, zero capabilities, SIGKILL on the jailer's death, execve. Each step that fails names itself.

use crate::cli::Rlimits;
use crate::error::{check, JailError};
use crate::jail::PendingBind;
use std::ffi::{CString, OsString};
use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::ptr;

/// Environment variables handed on to nimbus; all others are dropped.
const KEPT_ENV: [&str; 2] = ["NIMBUS_LOG", "RUST_BACKTRACE"];
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// What the jailed process needs to know.
pub struct Plan<'a> {
    pub root: &'a Path,
    pub exec_name: &'a Path,
    pub binds: &'a [PendingBind],
    pub cgroups: &'a [PathBuf],
    pub keep_fds: &'a [RawFd],
    /// The error pipe, kept open (close-on-exec) until the exec.
    pub error_fd: RawFd,
    pub rlimits: &'a Rlimits,
    pub uid: u32,
    pub gid: u32,
    pub daemonize: bool,
    pub nimbus_args: &'a [OsString],
}

/// Runs every step and execs nimbus; returns only with the step that failed.
pub fn enter_and_exec(plan: &Plan) -> JailError {
    match enter(plan) {
        Ok(()) => exec(plan),
        Err(e) => e,
    }
}

fn enter(plan: &Plan) -> Result<(), JailError> {
    let mut keep: Vec<RawFd> = vec![0, 1, 2, plan.error_fd];
    keep.extend_from_slice(plan.keep_fds);
    close_fds_except(&mut keep)?;
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC) };
    check(rc, || "enter new mount and IPC namespaces".into())?;
    for group in plan.cgroups {
        let procs = group.join("cgroup.procs");
        std::fs::write(&procs, "0").map_err(|e| JailError::path("join cgroup", procs, e))?;
    }
    if plan.daemonize {
        daemonize()?;
    }
    mount(
        None,
        Path::new("/"),
        libc::MS_REC | libc::MS_PRIVATE,
        "make mounts private",
    )?;
    mount(
        Some(plan.root),
        plan.root,
        libc::MS_BIND | libc::MS_REC,
        "bind the jail on itself at",
    )?;
    for bind in plan.binds {
        mount(
            Some(&bind.source),
            &bind.target,
            libc::MS_BIND,
            "bind-mount source at",
        )?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        mount(None, &bind.target, flags, "make read-only the source at")?;
    }
    pivot_into(plan.root)?;
    mount_proc()?;
    set_rlimits(plan.rlimits)?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, || "set no_new_privs".into())?;
    drop_bounding_set()?;
    switch_identity(plan.uid, plan.gid)?;
    clear_capabilities()?;
    die_with_the_jailer(plan.error_fd)
}

/// SIGKILL when the jailer dies (a jailer killed by SIGKILL cannot pass a signal on, and
/// would leave nimbus running with no one to remove the jail). Set after the uid switch, which
/// clears it. If the jailer died before, the error pipe has no reader left (POLLERR): stop.
fn die_with_the_jailer(error_fd: RawFd) -> Result<(), JailError> {
    // SAFETY: prctl with plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(rc, || "ask for SIGKILL when the jailer dies".into())?;
    let mut poll = libc::pollfd {
        fd: error_fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd, which lives through the call.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    check(rc, || "poll the error pipe".into())?;
    if poll.revents & libc::POLLERR != 0 {
        return Err(JailError::Process {
            step: "outlive the jailer".into(),
            source: ErrorKind::BrokenPipe.into(),
        });
    }
    Ok(())
}

/// Closes every descriptor not in `keep` (close_range over the gaps), and clears
/// close-on-exec on the `--keep-fd` ones so that nimbus inherits them.
fn close_fds_except(keep: &mut Vec<RawFd>) -> Result<(), JailError> {
    keep.sort_unstable();
    keep.dedup();
    let mut next: u32 = 0;
    for &fd in keep.iter() {
        let fd = fd as u32;
        if fd > next {
            close_range(next, fd - 1)?;
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX)
}

fn close_range(first: u32, last: u32) -> Result<(), JailError> {
    // SAFETY: close_range only closes descriptors of this process; none is in use by Rust
    // objects still alive here (the ones we need are outside the range).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if rc == -1 {
        return Err(JailError::last_os(format!(
            "close inherited descriptors {first}..={last}"
        )));
    }
    Ok(())
}

/// A new session without a terminal; stdin, stdout and stderr on /dev/null.
fn daemonize() -> Result<(), JailError> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }, || "start a new session".into())?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| JailError::path("open", "/dev/null", e))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        let rc = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
        check(rc, || "redirect standard I/O to /dev/null".into())?;
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::path("use path", path, ErrorKind::InvalidInput.into()))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    flags: libc::c_ulong,
    step: &'static str,
) -> Result<(), JailError> {
    let c_target = c_path(target)?;
    let c_source = source.map(c_path).transpose()?;
    let source_ptr = c_source.as_ref().map_or(ptr::null(), |s| s.as_ptr());
    // SAFETY: the strings are NUL-terminated and live through the call; fstype and data may be
    // NULL for bind, remount and propagation changes.
    let rc = unsafe {
        libc::mount(
            source_ptr,
            c_target.as_ptr(),
            ptr::null(),
            flags,
            ptr::null(),
        )
    };
    if rc == -1 {
        return Err(JailError::path(
            step,
            target,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// pivot_root(".", ".") in the jail, then detaches the old root stacked under it (the
/// pivot_root(2) idiom that needs no put_old directory).
fn pivot_into(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(|e| JailError::path("enter jail", root, e))?;
    let dot = c_path(Path::new("."))?;
    // SAFETY: pivot_root reads two NUL-terminated paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc == -1 {
        let cause = std::io::Error::last_os_error();
        return Err(JailError::path("pivot_root into", root, cause));
    }
    // SAFETY: umount2 reads one NUL-terminated path.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    if rc == -1 {
        let cause = std::io::Error::last_os_error();
        return Err(JailError::path("detach the old root from", root, cause));
    }
    std::env::set_current_dir("/").map_err(|e| JailError::path("enter", "/", e))
}

/// A procfs of the new PID namespace at /proc (nimbus lists /proc/self/fd): it shows only
/// the jailed processes. Read-only, no suid, no devices, no exec.
fn mount_proc() -> Result<(), JailError> {
    let proc_dir = c_path(Path::new("/proc"))?;
    let fstype = c_path(Path::new("proc"))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    // SAFETY: NUL-terminated strings alive through the call; no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            proc_dir.as_ptr(),
            fstype.as_ptr(),
            flags,
            ptr::null(),
        )
    };
    if rc == -1 {
        let cause = std::io::Error::last_os_error();
        return Err(JailError::path("mount procfs at", "/proc", cause));
    }
    Ok(())
}

fn set_rlimits(limits: &Rlimits) -> Result<(), JailError> {
    let set = |resource, value: u64, name: &str| {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct, which lives through the call.
        check(unsafe { libc::setrlimit(resource, &limit) }, || {
            format!("set {name} to {value}")
        })
    };
    set(libc::RLIMIT_NOFILE, limits.no_file, "RLIMIT_NOFILE")?;
    if let Some(fsize) = limits.fsize {
        set(libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE")?;
    }
    Ok(())
}

/// Empties the bounding set (so no exec can ever regain a capability) and the ambient set.
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: prctl with plain integers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc == -1 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(JailError::last_os(format!(
                "drop capability {cap} from the bounding set"
            )));
        }
    }
    // SAFETY: prctl with plain integers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(rc, || "clear the ambient capabilities".into())?;
    Ok(())
}

fn switch_identity(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, ptr::null()) }, || {
        "drop supplementary groups".into()
    })?;
    // SAFETY: plain integers.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || {
        format!("switch to gid {gid}")
    })?;
    // SAFETY: plain integers.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || {
        format!("switch to uid {uid}")
    })?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the effective, permitted and inheritable sets (already empty after a switch to a
/// non-zero uid; this also covers `--uid 0`).
fn clear_capabilities() -> Result<(), JailError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads the header and two data words, which live through the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc == -1 {
        return Err(JailError::last_os("drop every capability"));
    }
    Ok(())
}

/// execve("/<exec name>", [exec name, nimbus args...], kept environment).
fn exec(plan: &Plan) -> JailError {
    let path = Path::new("/").join(plan.exec_name);
    match exec_args(plan, &path) {
        Ok((c_path, argv, envp)) => {
            let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            argv_ptrs.push(ptr::null());
            let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
            envp_ptrs.push(ptr::null());
            // SAFETY: NULL-terminated arrays of NUL-terminated strings, alive through the call.
            unsafe { libc::execve(c_path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
            JailError::path("exec", path, std::io::Error::last_os_error())
        }
        Err(e) => e,
    }
}

type ExecArgs = (CString, Vec<CString>, Vec<CString>);

fn exec_args(plan: &Plan, path: &Path) -> Result<ExecArgs, JailError> {
    let bad = |_| JailError::path("exec", path, ErrorKind::InvalidInput.into());
    let c_path = c_path(path)?;
    let mut argv = vec![CString::new(plan.exec_name.as_os_str().as_bytes()).map_err(bad)?];
    for arg in plan.nimbus_args {
        argv.push(CString::new(arg.clone().into_vec()).map_err(bad)?);
    }
    let envp = KEPT_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| (name, v)))
        .map(|(name, value)| {
            let mut entry = format!("{name}=").into_bytes();
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).map_err(bad)
        })
        .collect::<Result<_, _>>()?;
    Ok((c_path, argv, envp))
}
