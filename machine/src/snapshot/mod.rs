//! Snapshots (StratoVirt's interface): QMP `migrate` with `file:<dir>` writes a stopped VM to
//! `<dir>/state` and `<dir>/memory`; `nimbus <the same machine> -incoming file:<dir>` starts
//! it again from there (`docs/snapshot.md`).
//!
//! - `state` ([`envelope`]): magic, format version, length and CRC-32 around a JSON
//!   [`MachineState`]: RAM size and vCPU count, each vCPU's registers ([`VcpuState`]), the
//!   irqchip (both PICs and the IOAPIC), the PIT, the KVM clock, the UART and every
//!   virtio-mmio transport's registers.
//! - `memory` ([`memory`]): guest RAM, zero pages left as holes; restore maps it private.
//! - Disks, taps and back ends are opened from the restore command line.

pub mod envelope;
pub mod memory;
pub mod restore;
mod take;
mod vcpu_state;

pub use take::{Snapshotter, IRQCHIPS};
pub use vcpu_state::{VcpuState, VcpuStateError};

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

/// The state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Everything besides guest RAM that the guest depends on.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// vCPUs.
    pub cpus: u8,
    /// The TSC frequency the guest saw (kHz).
    pub tsc_khz: u32,
    /// The vCPUs, in index order.
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchip: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock when the VM was stopped.
    pub clock: kvm_clock_data,
    /// The 16550.
    pub uart: devices::UartState,
    /// The virtio-mmio transports, in slot order.
    pub transports: Vec<virtio::TransportState>,
}

/// Why a snapshot could not be taken or used. Each names what differs or what failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// `migrate` was asked of a running VM.
    #[error("the VM must be stopped first (QMP stop)")]
    Running,
    /// The URI is not `file:<dir>`.
    #[error("unsupported destination {0:?}: expected file:<directory>")]
    Uri(String),
    /// The machine has something a snapshot cannot restore yet.
    #[error("cannot snapshot a VM with {0}")]
    Unsupported(String),
    /// A file could not be written or read.
    #[error("{what} {path:?}")]
    File {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The state file is damaged or not one of ours.
    #[error("the state file {path:?} cannot be used: {source}")]
    Envelope {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: envelope::EnvelopeError,
    },
    /// The state file's content does not decode.
    #[error("the state file {path:?} does not decode")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Where.
        #[source]
        source: serde_json::Error,
    },
    /// The memory file is not the size of the snapshot's RAM.
    #[error("the memory file {path:?} has {found} bytes, the snapshot's RAM {expected}: it is truncated or not this snapshot's")]
    MemoryFile {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The RAM size.
        expected: u64,
    },
    /// The restore command line describes another machine.
    #[error("the snapshot does not match the command line: {0}")]
    Mismatch(String),
    /// A vCPU's state could not be read or written.
    #[error("vCPU {id}")]
    Vcpu {
        /// The vCPU.
        id: u8,
        /// What failed.
        #[source]
        source: VcpuStateError,
    },
    /// A VM-wide KVM request failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A virtio device could not take its saved registers back.
    #[error("virtio device {index} (slot {index})")]
    Transport {
        /// The slot.
        index: usize,
        /// Why.
        #[source]
        source: virtio::TransportRestoreError,
    },
    /// The UART could not take its saved state back.
    #[error("the serial port")]
    Uart(#[source] devices::UartStateError),
}

/// The directory of `file:<dir>`.
pub fn parse_uri(uri: &str) -> Result<PathBuf, SnapshotError> {
    match uri.strip_prefix("file:") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Err(SnapshotError::Uri(uri.to_string())),
    }
}

fn file_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::File {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Writes `state` and guest RAM (`mem`) into `dir` (created if missing). The memory file is
/// written first and the state file last, through a temporary name: a directory with a
/// `state` file holds a whole snapshot. Returns the bytes of RAM written.
pub fn write(
    dir: &Path,
    state: &MachineState,
    mem: &address_space::vm_memory::GuestMemoryMmap,
) -> Result<u64, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(file_err("cannot create", dir))?;
    let state_path = dir.join(STATE_FILE);
    let _ = std::fs::remove_file(&state_path);
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::create(&memory_path).map_err(file_err("cannot create", &memory_path))?;
    let written =
        memory::write_ram(mem, &memory).map_err(file_err("cannot write", &memory_path))?;
    memory
        .sync_all()
        .map_err(file_err("cannot sync", &memory_path))?;
    let payload = serde_json::to_vec(state).map_err(|source| SnapshotError::Decode {
        path: state_path.clone(),
        source,
    })?;
    let partial = dir.join(format!("{STATE_FILE}.partial"));
    std::fs::write(&partial, envelope::seal(&payload))
        .map_err(file_err("cannot write", &partial))?;
    std::fs::rename(&partial, &state_path).map_err(file_err("cannot write", &state_path))?;
    Ok(written)
}

/// Reads and checks `<dir>/state`.
pub fn read(dir: &Path) -> Result<MachineState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(file_err("cannot read", &path))?;
    decode(&bytes, &path)
}

/// The state in `bytes` (a state file's content; `path` names it in errors): the envelope is
/// checked, then the payload decoded. Any input gives an error or a state, never a panic (the
/// fuzz target `snapshot_state` and the tests below feed it damaged files).
pub fn decode(bytes: &[u8], path: &Path) -> Result<MachineState, SnapshotError> {
    let payload = envelope::open(bytes).map_err(|source| SnapshotError::Envelope {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(payload).map_err(|source| SnapshotError::Decode {
        path: path.to_owned(),
        source,
    })
}

impl MachineState {
    /// Checks that a machine of `ram_size` bytes and `cpus` vCPUs is the one saved; each
    /// difference is named.
    pub fn check_machine(&self, ram_size: u64, cpus: u8) -> Result<(), SnapshotError> {
        if self.ram_size != ram_size {
            return Err(SnapshotError::Mismatch(format!(
                "-m is {} MiB, the snapshot has {} MiB",
                ram_size >> 20,
                self.ram_size >> 20
            )));
        }
        if self.cpus != cpus || self.vcpus.len() != usize::from(cpus) {
            return Err(SnapshotError::Mismatch(format!(
                "-smp is {cpus}, the snapshot has {}",
                self.cpus
            )));
        }
        Ok(())
    }

    /// Checks that the virtio devices of `device_types` (slot order) are the ones saved.
    pub fn check_devices(&self, device_types: &[u32]) -> Result<(), SnapshotError> {
        let saved: Vec<u32> = self.transports.iter().map(|t| t.device_type).collect();
        if saved != device_types {
            return Err(SnapshotError::Mismatch(format!(
                "virtio devices (slot order) are [{}], the snapshot has [{}]",
                type_names(device_types),
                type_names(&saved)
            )));
        }
        Ok(())
    }
}

fn type_names(types: &[u32]) -> String {
    types
        .iter()
        .map(|&t| match t {
            1 => "net".to_string(),
            2 => "blk".to_string(),
            4 => "rng".to_string(),
            5 => "balloon".to_string(),
            19 => "vsock".to_string(),
            26 => "fs".to_string(),
            other => format!("type {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MachineState {
        MachineState {
            ram_size: 128 << 20,
            cpus: 0,
            tsc_khz: 2_000_000,
            vcpus: Vec::new(),
            irqchip: vec![kvm_irqchip::default(); 3],
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data::default(),
            uart: devices::UartState::default(),
            transports: vec![virtio::TransportState::default()],
        }
    }

    #[test]
    fn a_state_written_decodes_to_the_same_machine() {
        let payload = serde_json::to_vec(&sample()).expect("encodes");
        let state = decode(&envelope::seal(&payload), Path::new("state")).expect("decodes");
        assert_eq!(state.ram_size, 128 << 20);
        assert_eq!(state.transports.len(), 1);
        assert!(state.check_machine(128 << 20, 0).is_ok());
        assert!(state.check_devices(&[0]).is_ok());
        let err = state.check_machine(256 << 20, 0).expect_err("-m differs");
        assert!(err.to_string().contains("-m is 256 MiB"), "{err}");
        let err = state.check_devices(&[2]).expect_err("devices differ");
        assert!(err.to_string().contains("[blk]"), "{err}");
    }

    /// A cheap stand-in for the fuzz target: every byte of a state file flipped, every
    /// truncation, and payloads that pass the checksum but are damaged JSON, never panic.
    #[test]
    fn damaged_state_files_are_errors_never_panics() {
        let payload = serde_json::to_vec(&sample()).expect("encodes");
        let sealed = envelope::seal(&payload);
        let path = Path::new("state");
        for at in (0..sealed.len()).step_by(7) {
            let mut bad = sealed.clone();
            bad[at] ^= 0x41;
            assert!(decode(&bad, path).is_err(), "flip at {at}");
            assert!(decode(&sealed[..at], path).is_err(), "cut at {at}");
        }
        let mut seed = 0x1234_5678_u64;
        for _ in 0..500 {
            let mut body = payload.clone();
            for _ in 0..4 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (seed >> 33) as usize % body.len();
                body[at] = (seed >> 20) as u8;
            }
            let _ = decode(&envelope::seal(&body), path);
        }
    }
}
