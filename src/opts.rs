//! QEMU-style option lists: `[value,]key=value,key,...`.

use std::str::FromStr;

/// One parsed option list, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptList {
    pairs: Vec<(String, String)>,
}

impl OptList {
    /// Parses `text`; a leading element without `=` is the value of `implied_key` (when the
    /// flag has one), any other element without `=` is a switch whose value is "on".
    pub fn parse(text: &str, implied_key: Option<&str>) -> OptList {
        let mut pairs = Vec::new();
        for (index, element) in text.split(',').enumerate() {
            if element.is_empty() {
                continue;
            }
            match element.split_once('=') {
                Some((key, value)) => pairs.push((key.to_string(), value.to_string())),
                None => match implied_key {
                    Some(key) if index == 0 => pairs.push((key.to_string(), element.to_string())),
                    _ => pairs.push((element.to_string(), "on".to_string())),
                },
            }
        }
        OptList { pairs }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as on or off (QEMU's spellings), or `default` when it is not given;
    /// the error is the reason, for the caller's error that names the flag.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        self.get(key).map_or(Ok(default), |v| {
            parse_bool(v).ok_or_else(|| format!("{key} must be on or off"))
        })
    }

    /// The value of `key` as a number, if given; the error is the reason.
    pub fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| v.parse().map_err(|_| format!("{key} must be a number")))
            .transpose()
    }

    /// The first key not in `allowed`, if any.
    pub fn unknown_key(&self, allowed: &[&str]) -> Option<&str> {
        self.pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !allowed.contains(k))
    }
}

/// Parses `on|off|true|false|yes|no`.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Parses a size: a plain number is in `default_unit` bytes; suffixes K, M, G, T (and with B).
pub fn parse_size(value: &str, default_unit: u64) -> Option<u64> {
    let value = value.trim();
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, suffix) = value.split_at(digits_end);
    let number: u64 = digits.parse().ok()?;
    let unit = match suffix.to_ascii_uppercase().as_str() {
        "" => default_unit,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_value_takes_the_implied_key() {
        let opts = OptList::parse("microvm,dump-guest-core=off", Some("type"));
        assert_eq!(opts.get("type"), Some("microvm"));
        assert_eq!(opts.get("dump-guest-core"), Some("off"));
    }

    #[test]
    fn bare_words_after_the_first_are_switches() {
        let opts = OptList::parse("unix:/tmp/q.sock,server,nowait", Some("path"));
        assert_eq!(opts.get("server"), Some("on"));
        assert_eq!(opts.get("nowait"), Some("on"));
    }

    #[test]
    fn later_keys_override_earlier_ones() {
        assert_eq!(OptList::parse("cpus=1,cpus=4", None).get("cpus"), Some("4"));
    }

    #[test]
    fn unknown_keys_are_found() {
        let opts = OptList::parse("size=128,bogus=1", None);
        assert_eq!(opts.unknown_key(&["size", "maxmem"]), Some("bogus"));
    }

    #[test]
    fn sizes_accept_plain_mib_and_suffixes() {
        assert_eq!(parse_size("512", 1 << 20), Some(512 << 20));
        assert_eq!(parse_size("2G", 1 << 20), Some(2 << 30));
        assert_eq!(parse_size("128M", 1 << 20), Some(128 << 20));
        assert_eq!(parse_size("12xyz", 1 << 20), None);
        assert_eq!(parse_size("", 1 << 20), None);
        assert_eq!(parse_size("99999999999999999999", 1 << 20), None);
    }

    #[test]
    fn flags_and_numbers_default_when_absent_and_name_the_key_when_wrong() {
        let opts = OptList::parse("a=on,b=maybe,n=12,m=lots", None);
        assert_eq!(opts.flag("a", false), Ok(true));
        assert_eq!(opts.flag("absent", true), Ok(true));
        assert_eq!(
            opts.flag("b", false),
            Err("b must be on or off".to_string())
        );
        assert_eq!(opts.number::<u32>("n"), Ok(Some(12)));
        assert_eq!(opts.number::<u32>("absent"), Ok(None));
        assert_eq!(
            opts.number::<u32>("m"),
            Err("m must be a number".to_string())
        );
    }

    #[test]
    fn bools_accept_qemu_spellings() {
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
