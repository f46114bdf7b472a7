//! The virtio-balloon on the machine: creating it over guest RAM, and its QMP side (`balloon`,
//! `query-balloon`, `BALLOON_CHANGED`, and QEMU's `qom-get`/`qom-set` properties
//! `guest-stats` and `guest-stats-polling-interval`).

use crate::error::MachineError;
use crate::slots::Labelled;
use address_space::{AddressSpace, RamDiscard};
use qmp::schema::{BalloonChangedInfo, BalloonInfo, QomGetArgs, QomSetArgs};
use qmp::{Event, QmpError, Response};
use std::sync::Arc;
use virtio::{Balloon, BalloonOptions, Shared};

/// QEMU's QOM container of devices created with an id.
const PERIPHERAL: &str = "/machine/peripheral/";
/// Nimbus's own property: what the device did and ignored ([`virtio::BalloonCounters`]).
pub const COUNTERS_PROPERTY: &str = "x-counters";

/// The balloon as the monitor reaches it.
pub struct BalloonHandle {
    device: Shared<Balloon>,
    id: Option<String>,
}

/// Creates the balloon over the RAM of `mmio` (`ram_size` bytes).
pub fn balloon_device(
    options: &BalloonOptions,
    ram_size: u64,
    mmio: &AddressSpace,
) -> Result<(Labelled, BalloonHandle), MachineError> {
    let ram = Arc::new(RamDiscard::of(&mmio.flat_view()));
    let balloon = Balloon::new(options.clone(), ram_size, ram).map_err(MachineError::Balloon)?;
    let device = Shared::new(balloon);
    let mut label = format!("virtio-balloon '{}'", options.id.as_deref().unwrap_or("-"));
    if options.deflate_on_oom {
        label.push_str(", deflate-on-oom");
    }
    if options.free_page_reporting {
        label.push_str(", free-page-reporting");
    }
    let handle = BalloonHandle {
        device: device.clone(),
        id: options.id.clone(),
    };
    Ok(((label, Box::new(device)), handle))
}

fn no_balloon() -> QmpError {
    QmpError::device_not_active("No balloon device has been activated")
}

impl BalloonHandle {
    /// `BALLOON_CHANGED` when the guest changed the balloon's size since the last call; the
    /// counters go to the log with it.
    pub fn take_event(&self) -> Option<Event> {
        let mut device = self.device.lock();
        let actual = device.take_change()?;
        let c = device.counters();
        log::info!(
            "virtio-balloon: guest has {actual} bytes; pages inflated {}, deflated {}, \
             reported {} bytes; ignored: {} outside RAM, {} repeated, {} not inflated, \
             {} requests dropped",
            c.inflated_pages,
            c.deflated_pages,
            c.reported_bytes,
            c.ignored_outside_ram,
            c.ignored_repeated,
            c.ignored_not_inflated,
            c.dropped_requests
        );
        Some(Event::BalloonChanged(BalloonChangedInfo {
            actual: i64::try_from(actual).unwrap_or(i64::MAX),
        }))
    }

    /// Whether `path` names this device: its id, or `/machine/peripheral/<id>`.
    fn is_path(&self, path: &str) -> bool {
        let Some(id) = &self.id else {
            return false;
        };
        path == id || path.strip_prefix(PERIPHERAL) == Some(id.as_str())
    }
}

/// `balloon {"value": bytes}`.
pub fn balloon(handle: Option<&BalloonHandle>, value: i64) -> Result<Response, QmpError> {
    let handle = handle.ok_or_else(no_balloon)?;
    let target = u64::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| QmpError::invalid_parameter_value("target", "a size"))?;
    handle.device.lock().set_target(target);
    Ok(Response::empty())
}

/// `query-balloon`.
pub fn query_balloon(handle: Option<&BalloonHandle>) -> Result<Response, QmpError> {
    let handle = handle.ok_or_else(no_balloon)?;
    let actual = handle.device.lock().actual_bytes();
    Response::from_serialize(&BalloonInfo {
        actual: i64::try_from(actual).unwrap_or(i64::MAX),
    })
}

fn device<'a>(
    handle: Option<&'a BalloonHandle>,
    path: &str,
) -> Result<&'a BalloonHandle, QmpError> {
    handle
        .filter(|h| h.is_path(path))
        .ok_or_else(|| QmpError::device_not_found(path))
}

fn no_property(name: &str) -> QmpError {
    QmpError::generic(format!("Property '{name}' not found"))
}

/// `qom-get` of the balloon's properties.
pub fn qom_get(handle: Option<&BalloonHandle>, args: &QomGetArgs) -> Result<Response, QmpError> {
    let handle = device(handle, &args.path)?;
    let device = handle.device.lock();
    match args.property.as_str() {
        "guest-stats" => Response::from_serialize(&device.guest_stats()),
        "guest-stats-polling-interval" => Response::from_serialize(&device.poll_interval()),
        "deflate-on-oom" => Response::from_serialize(&device.options().deflate_on_oom),
        "free-page-reporting" => Response::from_serialize(&device.options().free_page_reporting),
        COUNTERS_PROPERTY => Response::from_serialize(&device.counters()),
        other => Err(no_property(other)),
    }
}

/// `qom-set` of `guest-stats-polling-interval` (the only writable property).
pub fn qom_set(handle: Option<&BalloonHandle>, args: &QomSetArgs) -> Result<Response, QmpError> {
    let handle = device(handle, &args.path)?;
    if args.property != "guest-stats-polling-interval" {
        return Err(match args.property.as_str() {
            "guest-stats" | "deflate-on-oom" | "free-page-reporting" | COUNTERS_PROPERTY => {
                QmpError::generic(format!("Property '{}' is read-only", args.property))
            }
            other => no_property(other),
        });
    }
    let seconds = args
        .value
        .as_i64()
        .ok_or_else(|| QmpError::invalid_parameter_type("value", "integer"))?;
    if seconds < 0 {
        return Err(QmpError::generic("timer value must be greater than zero"));
    }
    if seconds > i64::from(u32::MAX) {
        return Err(QmpError::generic("timer value is too big"));
    }
    handle.device.lock().set_poll_interval(seconds as u64);
    Ok(Response::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use address_space::{Region, SpaceKind};
    use serde_json::json;

    fn handle(id: Option<&str>) -> BalloonHandle {
        let root = Region::container("root", 1 << 30);
        root.add_subregion(Region::ram("ram", 0x100_0000).expect("ram"), 0, 0)
            .expect("add");
        let space = AddressSpace::new(SpaceKind::Memory, root).expect("space");
        let options = BalloonOptions {
            id: id.map(str::to_owned),
            ..BalloonOptions::default()
        };
        balloon_device(&options, 0x100_0000, &space)
            .expect("balloon")
            .1
    }

    #[test]
    fn without_a_balloon_commands_say_no_balloon_device_has_been_activated() {
        for err in [balloon(None, 1 << 20), query_balloon(None)] {
            let err = err.expect_err("no balloon");
            assert_eq!(err, no_balloon());
        }
    }

    #[test]
    fn balloon_refuses_sizes_that_are_not_positive() {
        let h = handle(Some("b0"));
        let err = balloon(Some(&h), 0).expect_err("zero");
        assert_eq!(err.desc, "Parameter 'target' expects a size");
        assert!(balloon(Some(&h), 1 << 20).is_ok());
        let info = query_balloon(Some(&h)).expect("query").value;
        assert_eq!(info, json!({"actual": 0x100_0000}));
    }

    #[test]
    fn qom_paths_name_the_device_by_id_and_properties_read_as_qemu_has_them() {
        let h = handle(Some("balloon0"));
        let get = |path: &str, property: &str| {
            qom_get(
                Some(&h),
                &QomGetArgs {
                    path: path.into(),
                    property: property.into(),
                },
            )
        };
        let stats = get("/machine/peripheral/balloon0", "guest-stats").expect("stats");
        assert_eq!(stats.value["last-update"], json!(0));
        assert_eq!(stats.value["stats"]["stat-free-memory"], json!(-1));
        assert!(get("balloon0", "guest-stats-polling-interval").is_ok());
        let err = get("/machine/peripheral/other", "guest-stats").expect_err("path");
        assert_eq!(err, QmpError::device_not_found("/machine/peripheral/other"));
        assert!(get("balloon0", "nope").is_err());
        let set = |value| {
            qom_set(
                Some(&h),
                &QomSetArgs {
                    path: "balloon0".into(),
                    property: "guest-stats-polling-interval".into(),
                    value,
                },
            )
        };
        assert!(set(json!(2)).is_ok());
        assert_eq!(
            get("balloon0", "guest-stats-polling-interval")
                .expect("get")
                .value,
            json!(2)
        );
        assert_eq!(
            set(json!(-1)).expect_err("neg").desc,
            "timer value must be greater than zero"
        );
        assert!(set(json!("2")).is_err());
    }
}
