//! cgroup limits: `--cgroup memory.max=..`, `cpu.max=..`, `pids.max=..` (cgroup v2 names).
//!
//! A limit goes to the v2 hierarchy when that hierarchy has its controller; otherwise to the
//! v1 hierarchy mounted with that controller, under the v1 file names (hybrid hosts keep
//! memory, cpu and pids on v1). The group is `<hierarchy>/nimbus/<id>`; with v2 the jailer
//! enables the controller in `cgroup.subtree_control` of the root and of `nimbus/`. The jailed
//! process joins each group (writes 0 to `cgroup.procs`) before it pivots into the jail.
//! [`Cgroups::remove`] removes the directories the jailer made, innermost first.

use crate::error::JailError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The v2 keys the jailer knows.
const KEYS: [&str; 3] = ["memory.max", "cpu.max", "pids.max"];
/// The parent of every jailer group in a hierarchy.
const PARENT: &str = "nimbus";
/// cpu.cfs_period_us when `cpu.max` gives only a quota (the v2 default period).
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// One `--cgroup key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    /// The v2 file name (`memory.max`).
    pub key: String,
    pub value: String,
}

impl CgroupLimit {
    /// Parses and checks `key=value`: the key must be one of [`KEYS`], the value `max` or a
    /// number (`cpu.max`: `max|QUOTA [PERIOD]`).
    pub fn parse(arg: &str) -> Result<CgroupLimit, JailError> {
        let bad = |why: &str| JailError::CgroupArg {
            arg: arg.to_string(),
            why: why.to_string(),
        };
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if !KEYS.contains(&key) {
            return Err(bad("known keys are memory.max, cpu.max and pids.max"));
        }
        let number_or_max = |v: &str| v == "max" || v.parse::<u64>().is_ok();
        let words: Vec<&str> = value.split_whitespace().collect();
        let ok = match (key, words.as_slice()) {
            ("cpu.max", [quota]) => number_or_max(quota),
            ("cpu.max", [quota, period]) => number_or_max(quota) && period.parse::<u64>().is_ok(),
            (_, [v]) => number_or_max(v),
            _ => false,
        };
        if !ok {
            return Err(bad("the value must be `max` or a number"));
        }
        Ok(CgroupLimit {
            key: key.to_string(),
            value: words.join(" "),
        })
    }

    /// The controller the key belongs to (`memory`).
    pub fn controller(&self) -> &str {
        self.key.split('.').next().unwrap_or_default()
    }

    /// The v1 files and values that express this limit, in the order to write them.
    pub fn v1_files(&self) -> Vec<(&'static str, String)> {
        let v1 = |v: &str| {
            if v == "max" {
                "-1".to_string()
            } else {
                v.to_string()
            }
        };
        match self.key.as_str() {
            "memory.max" => vec![("memory.limit_in_bytes", v1(&self.value))],
            "cpu.max" => {
                let mut words = self.value.split_whitespace();
                let quota = v1(words.next().unwrap_or("max"));
                let period = words
                    .next()
                    .map_or(DEFAULT_CPU_PERIOD.to_string(), str::to_string);
                vec![("cpu.cfs_period_us", period), ("cpu.cfs_quota_us", quota)]
            }
            _ => vec![("pids.max", self.value.clone())],
        }
    }
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v2 (`cgroup2`) or v1 (`cgroup`).
    pub v2: bool,
    /// For v1, the controllers in the mount's options.
    pub v1_controllers: Vec<String>,
}

/// The cgroup hierarchies in a `/proc/self/mountinfo` text.
pub fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or_default();
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Hierarchy {
                mount: PathBuf::from(mount),
                v2,
                v1_controllers: if v2 {
                    Vec::new()
                } else {
                    options.split(',').map(str::to_string).collect()
                },
            })
        })
        .collect()
}

/// The hierarchy that should hold `controller`: v2 when its `cgroup.controllers` lists it,
/// otherwise the v1 mount carrying it.
fn hierarchy_for<'a>(all: &'a [Hierarchy], controller: &str) -> Option<&'a Hierarchy> {
    let in_v2 = |h: &&Hierarchy| {
        h.v2 && std::fs::read_to_string(h.mount.join("cgroup.controllers"))
            .is_ok_and(|list| list.split_whitespace().any(|c| c == controller))
    };
    all.iter().find(in_v2).or_else(|| {
        all.iter()
            .find(|h| !h.v2 && h.v1_controllers.iter().any(|c| c == controller))
    })
}

/// The groups the jailer made for one VM.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// Directories the jailer created, outermost first.
    made: Vec<PathBuf>,
    /// The VM's group in each hierarchy used: the jailed process joins each.
    pub groups: Vec<PathBuf>,
}

impl Cgroups {
    /// Makes `nimbus/<id>` in each hierarchy a limit needs and writes the limits. On failure
    /// the directories made so far are removed.
    pub fn create(id: &str, limits: &[CgroupLimit]) -> Result<Cgroups, JailError> {
        let mut cgroups = Cgroups::default();
        if limits.is_empty() {
            return Ok(cgroups);
        }
        match cgroups.create_inner(id, limits) {
            Ok(()) => Ok(cgroups),
            Err(e) => {
                cgroups.remove();
                Err(e)
            }
        }
    }

    fn create_inner(&mut self, id: &str, limits: &[CgroupLimit]) -> Result<(), JailError> {
        let mountinfo = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(mountinfo)
            .map_err(|e| JailError::path("read", mountinfo, e))?;
        let all = hierarchies(&text);
        for limit in limits {
            let controller = limit.controller();
            let hierarchy = hierarchy_for(&all, controller).ok_or_else(|| JailError::Process {
                step: format!("find a cgroup hierarchy with the {controller} controller"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
            let group = self.group_in(hierarchy, id, controller)?;
            if hierarchy.v2 {
                write(&group.join(&limit.key), &limit.value)?;
            } else {
                for (file, value) in limit.v1_files() {
                    write(&group.join(file), &value)?;
                }
            }
        }
        Ok(())
    }

    /// The VM's group in `hierarchy`, made (with `nimbus/`) on first use; for v2 with
    /// `controller` enabled for it.
    fn group_in(
        &mut self,
        hierarchy: &Hierarchy,
        id: &str,
        controller: &str,
    ) -> Result<PathBuf, JailError> {
        let parent = hierarchy.mount.join(PARENT);
        let group = parent.join(id);
        if hierarchy.v2 {
            write(
                &hierarchy.mount.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            )?;
        }
        if !parent.exists() {
            self.make_dir(&parent)?;
        }
        if hierarchy.v2 {
            write(
                &parent.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            )?;
        }
        if !self.groups.contains(&group) {
            self.make_dir(&group)?;
            self.groups.push(group.clone());
        }
        Ok(group)
    }

    fn make_dir(&mut self, dir: &Path) -> Result<(), JailError> {
        std::fs::create_dir(dir).map_err(|e| JailError::path("create cgroup", dir, e))?;
        self.made.push(dir.to_path_buf());
        Ok(())
    }

    /// Removes the directories the jailer made, innermost first. A group's last process may
    /// still be leaving it for a moment, so each rmdir is retried briefly. `nimbus/` stays when
    /// another VM's group is in it.
    pub fn remove(&mut self) {
        for dir in self.made.drain(..).rev() {
            for _ in 0..100 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Writes `value` to the cgroup file `path`.
fn write(path: &Path, value: &str) -> Result<(), JailError> {
    std::fs::write(path, value).map_err(|e| JailError::path("write cgroup file", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_map_to_v1_files() {
        let mem = CgroupLimit::parse("memory.max=268435456").expect("parses");
        assert_eq!(mem.controller(), "memory");
        assert_eq!(
            mem.v1_files(),
            vec![("memory.limit_in_bytes", "268435456".to_string())]
        );
        let cpu = CgroupLimit::parse("cpu.max=50000 100000").expect("parses");
        assert_eq!(
            cpu.v1_files(),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "50000".to_string())
            ]
        );
        let cpu = CgroupLimit::parse("cpu.max=max").expect("parses");
        assert_eq!(cpu.v1_files()[1], ("cpu.cfs_quota_us", "-1".to_string()));
        let pids = CgroupLimit::parse("pids.max=64").expect("parses");
        assert_eq!(pids.v1_files(), vec![("pids.max", "64".to_string())]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for arg in [
            "memory.high=1",
            "pids.max",
            "pids.max=lots",
            "cpu.max=1 2 3",
            "x=1",
        ] {
            assert!(CgroupLimit::parse(arg).is_err(), "{arg}");
        }
    }

    #[test]
    fn mountinfo_of_a_hybrid_host_gives_v1_and_v2_hierarchies() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        let all = hierarchies(text);
        assert_eq!(all.len(), 3);
        assert!(all[0].v2);
        assert_eq!(all[0].mount, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(all[1].v1_controllers, vec!["rw", "memory"]);
        let memory = hierarchy_for(&all, "memory").expect("found");
        assert_eq!(memory.mount, PathBuf::from("/sys/fs/cgroup/memory"));
    }
}
