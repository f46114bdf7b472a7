//! MAC addresses: the one parser of `mac=` values in the project, and the default address of a
//! device without one.

use std::fmt;
use std::str::FromStr;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A stable, locally administered unicast address derived from the device id (FNV-1a of
    /// the id): the same id gives the same address on every run.
    pub fn default_for_id(id: &str) -> MacAddr {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in id.as_bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = hash.to_le_bytes();
        MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
    }
}

/// Why a `mac=` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six pairs of hex digits separated by ':' or '-'.
    #[error(
        "MAC address {0:?} is not six hex pairs separated by ':' or '-', like 52:54:00:12:34:56"
    )]
    Syntax(String),
    /// The group bit is set: a guest's driver would refuse the address.
    #[error("MAC address {0:?} is a multicast address")]
    Multicast(String),
}

/// Bytes of "52:54:00:12:34:56".
const TEXT_LEN: usize = 17;

impl FromStr for MacAddr {
    type Err = MacError;

    /// Accepts what QEMU's `mac` device property accepts (hw/core/qdev-properties-system.c,
    /// `set_mac`): six pairs of hex digits in either case, each pair but the last followed by
    /// ':' or '-', and nothing else. The address must also be unicast.
    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let syntax = || MacError::Syntax(s.to_owned());
        let text = s.as_bytes();
        if text.len() != TEXT_LEN {
            return Err(syntax());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.chunks(3)) {
            let (hi, lo) = (hex_digit(part[0]), hex_digit(part[1]));
            let separator = part.get(2).copied();
            match (hi, lo, separator) {
                (Some(hi), Some(lo), None | Some(b':' | b'-')) => *byte = hi << 4 | lo,
                _ => return Err(syntax()),
            }
        }
        if mac[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_owned()));
        }
        Ok(MacAddr(mac))
    }
}

/// The value of one ASCII hex digit.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<[u8; 6], MacError> {
        text.parse::<MacAddr>().map(|mac| mac.0)
    }

    #[test]
    fn default_mac_is_stable_and_locally_administered_unicast() {
        let a = MacAddr::default_for_id("net0");
        assert_eq!(a, MacAddr::default_for_id("net0"));
        assert_ne!(a, MacAddr::default_for_id("net1"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn colon_separated_pairs_parse_and_print_back() {
        let mac: MacAddr = "52:54:00:12:34:5f".parse().expect("a valid MAC");
        assert_eq!(mac.0, [0x52, 0x54, 0, 0x12, 0x34, 0x5f]);
        assert_eq!(mac.to_string(), "52:54:00:12:34:5f");
    }

    #[test]
    fn dashes_upper_case_and_mixed_separators_parse_as_in_qemu() {
        let expected = Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(parse("52-54-00-AB-CD-EF"), expected);
        assert_eq!(parse("52:54-00:ab-Cd:eF"), expected);
    }

    #[test]
    fn multicast_address_is_refused_naming_it() {
        let err = parse("01:00:5e:00:00:01").expect_err("multicast");
        assert_eq!(err, MacError::Multicast("01:00:5e:00:00:01".to_owned()));
        assert!(err.to_string().contains("\"01:00:5e:00:00:01\""), "{err}");
    }

    #[test]
    fn anything_but_six_separated_hex_pairs_is_refused_naming_the_text() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:56:",
            " 52:54:00:12:34:56",
            "5:54:00:12:34:56",
            "5:054:00:12:34:56",
            "525400123456",
            "52.54.00.12.34.56",
            "52::4:00:12:34:56",
            "zz:54:00:12:34:56",
            "+2:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:56\n",
            "0x52:54:00:12:34",
            "52:54:00:12:34:é",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err, MacError::Syntax(bad.to_owned()));
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
