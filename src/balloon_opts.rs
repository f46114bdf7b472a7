//! `-device virtio-balloon-device,id=<id>[,deflate-on-oom=true][,free-page-reporting=true]`
//! (QEMU's `true`/`false` and StratoVirt's `on`/`off` both read).

use crate::opts::OptList;
use crate::settings::{invalid, SettingsError};
use machine::BalloonOptions;

/// The device type of the balloon.
pub const BALLOON_DEVICE: &str = "virtio-balloon-device";

/// The balloon of the command line, if any.
pub fn parse_balloon(devices: &[String]) -> Result<Option<BalloonOptions>, SettingsError> {
    let balloons: Vec<&String> = devices
        .iter()
        .filter(|d| OptList::parse(d, Some("driver")).get("driver") == Some(BALLOON_DEVICE))
        .collect();
    let Some(value) = balloons.first() else {
        return Ok(None);
    };
    if balloons.len() > 1 {
        return Err(SettingsError::NotSupported(
            "more than one virtio-balloon-device".to_string(),
        ));
    }
    let opts = OptList::parse(value, Some("driver"));
    let allowed = [
        "driver",
        "id",
        "bus",
        "deflate-on-oom",
        "free-page-reporting",
    ];
    if let Some(key) = opts.unknown_key(&allowed) {
        return Err(invalid("device", value, format!("unknown option '{key}'")));
    }
    let flag = |key| {
        opts.flag(key, false)
            .map_err(|r| invalid("device", value, r))
    };
    Ok(Some(BalloonOptions {
        id: opts.get("id").map(str::to_owned),
        deflate_on_oom: flag("deflate-on-oom")?,
        free_page_reporting: flag("free-page-reporting")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<BalloonOptions>, SettingsError> {
        parse_balloon(&[line.to_string()])
    }

    #[test]
    fn qemu_and_stratovirt_spellings_read_the_same() {
        let qemu =
            parse("virtio-balloon-device,id=balloon0,deflate-on-oom=true,free-page-reporting=true")
                .expect("ok")
                .expect("a balloon");
        let strato =
            parse("virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on")
                .expect("ok")
                .expect("a balloon");
        assert_eq!(qemu, strato);
        assert_eq!(qemu.id.as_deref(), Some("balloon0"));
        assert!(qemu.deflate_on_oom && qemu.free_page_reporting);
        let plain = parse("virtio-balloon-device")
            .expect("ok")
            .expect("a balloon");
        assert_eq!(plain, BalloonOptions::default());
    }

    #[test]
    fn unknown_options_bad_flags_and_two_balloons_are_refused() {
        assert!(parse("virtio-balloon-device,guest-stats-polling-interval=2").is_err());
        assert!(parse("virtio-balloon-device,deflate-on-oom=maybe").is_err());
        let two = [
            "virtio-balloon-device".to_string(),
            "virtio-balloon-device,id=b".to_string(),
        ];
        assert!(matches!(
            parse_balloon(&two),
            Err(SettingsError::NotSupported(_))
        ));
        assert!(parse_balloon(&["virtio-rng-device".to_string()])
            .expect("ok")
            .is_none());
    }
}
