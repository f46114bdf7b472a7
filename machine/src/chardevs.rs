//! Opens the machine's chardevs and connects them to their front ends: the UART
//! (`-serial chardev:<id>`, `-serial pty`) and the virtconsole port.

use crate::chardev::events::{ChardevEvents, ConsoleFrontend, SerialFrontend};
use crate::chardev::{Chardev, ChardevBackend, ChardevWriter, SharedChardev};
use crate::config::{ConsoleConfig, MachineConfig, SerialConfig};
use crate::error::MachineError;
use crate::event_loop::EventLoop;
use crate::slots::Labelled;
use devices::Serial;
use qmp::schema::ChardevInfo;
use std::sync::{Arc, Mutex};
use virtio::{Console, Shared};

/// The open chardevs, in command-line order.
#[derive(Default, Clone)]
pub struct Chardevs(Vec<SharedChardev>);

impl Chardevs {
    /// Opens every chardev of `config` (a pty announces its path on stderr).
    pub fn open(config: &MachineConfig) -> Result<Chardevs, MachineError> {
        let mut open = Vec::with_capacity(config.chardevs.len());
        for chardev in &config.chardevs {
            open.push(Arc::new(Mutex::new(Chardev::open(chardev)?)));
        }
        Ok(Chardevs(open))
    }

    /// Chardev `id`, or the error naming `frontend`.
    fn get(&self, id: &str, frontend: impl Into<String>) -> Result<SharedChardev, MachineError> {
        self.0
            .iter()
            .find(|c| address_space::sync::lock(c).id() == id)
            .cloned()
            .ok_or_else(|| MachineError::UnknownChardev {
                frontend: frontend.into(),
                id: id.to_string(),
            })
    }

    /// The UART's chardev, for `-serial chardev:<id>`.
    pub fn serial(&self, serial: &SerialConfig) -> Result<Option<SharedChardev>, MachineError> {
        match serial {
            SerialConfig::Chardev(id) => self.get(id, "-serial").map(Some),
            _ => Ok(None),
        }
    }

    /// The virtio-console device writing to its chardev, and the chardev.
    pub fn console(
        &self,
        console: &ConsoleConfig,
    ) -> Result<(Labelled, Shared<Console>, SharedChardev), MachineError> {
        let chardev = self.get(&console.chardev, format!("virtconsole '{}'", console.id))?;
        let device = Shared::new(Console::new(Box::new(ChardevWriter::waiting(
            chardev.clone(),
        ))));
        let label = format!(
            "virtio-console '{}' on chardev '{}'",
            console.id, console.chardev
        );
        Ok(((label, Box::new(device.clone())), device, chardev))
    }

    /// Whether a chardev reads stdin (the terminal then goes to raw mode).
    pub fn uses_stdio(config: &MachineConfig) -> bool {
        config
            .chardevs
            .iter()
            .any(|c| c.backend == ChardevBackend::Stdio)
    }

    /// `query-chardev`'s entries of these chardevs.
    pub fn query(&self) -> Vec<ChardevInfo> {
        self.0
            .iter()
            .map(|c| {
                let c = address_space::sync::lock(c);
                ChardevInfo {
                    label: c.id().to_string(),
                    filename: c.filename(),
                    frontend_open: c.frontend_open(),
                }
            })
            .collect()
    }
}

/// The UART's output to its chardev: what the reader cannot take now is dropped.
pub fn serial_writer(chardev: SharedChardev) -> Box<dyn std::io::Write + Send> {
    Box::new(ChardevWriter::dropping(chardev))
}

/// Puts each used chardev on the loop with its front end (as device subscribers: QMP `stop`
/// freezes console input with the devices).
pub fn join_frontends(
    events: &mut EventLoop,
    serial: Option<(SharedChardev, Arc<Mutex<Serial>>)>,
    console: Option<(SharedChardev, Shared<Console>)>,
) {
    if let Some((chardev, uart)) = serial {
        let sub = ChardevEvents::new(chardev, Box::new(SerialFrontend(uart)));
        events.add_device(Arc::new(Mutex::new(sub)));
    }
    if let Some((chardev, device)) = console {
        let sub = ChardevEvents::new(chardev, Box::new(ConsoleFrontend(device)));
        events.add_device(Arc::new(Mutex::new(sub)));
    }
}
