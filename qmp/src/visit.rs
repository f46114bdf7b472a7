//! Reading command arguments with QEMU's input-visitor rules and error texts.
//!
//! Each typed member is taken out of the argument object; whatever is left at the end is
//! "unexpected". Nested objects report members by their dotted path (`file.filename`), list
//! elements by index (`enable[0]`), as `qobject-input-visitor.c` does.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::QmpError;

/// The members of one argument object not yet read.
#[derive(Debug)]
pub(crate) struct Args {
    map: Map<String, Value>,
    prefix: String,
}

impl Args {
    /// The top-level `arguments` object.
    pub(crate) fn new(map: Map<String, Value>) -> Args {
        Args {
            map,
            prefix: String::new(),
        }
    }

    /// The path QEMU shows for member `name`.
    pub(crate) fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Remove member `name`, whatever its type.
    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// Every member not read yet, for commands that pass unknown members through.
    pub(crate) fn into_rest(self) -> Map<String, Value> {
        self.map
    }

    /// Fail on the first member nobody read.
    pub(crate) fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().next() {
            Some(key) => Err(QmpError::unexpected_parameter(&self.full_name(key))),
            None => Ok(()),
        }
    }

    /// A mandatory member: `read` must have found it.
    pub(crate) fn required<T>(&self, name: &str, value: Option<T>) -> Result<T, QmpError> {
        value.ok_or_else(|| QmpError::missing_parameter(&self.full_name(name)))
    }

    /// An optional string member.
    pub(crate) fn opt_str(&mut self, name: &str) -> Result<Option<String>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(QmpError::invalid_parameter_type(
                &self.full_name(name),
                "string",
            )),
        }
    }

    /// A mandatory string member.
    pub(crate) fn req_str(&mut self, name: &str) -> Result<String, QmpError> {
        let value = self.opt_str(name)?;
        self.required(name, value)
    }

    /// An optional boolean member.
    pub(crate) fn opt_bool(&mut self, name: &str) -> Result<Option<bool>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(QmpError::invalid_parameter_type(
                &self.full_name(name),
                "boolean",
            )),
        }
    }

    /// An optional signed 64-bit integer member.
    pub(crate) fn opt_int(&mut self, name: &str) -> Result<Option<i64>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(_) => Err(QmpError::invalid_parameter_type(
                &self.full_name(name),
                "integer",
            )),
        }
    }

    /// A mandatory signed 64-bit integer member.
    pub(crate) fn req_int(&mut self, name: &str) -> Result<i64, QmpError> {
        let value = self.opt_int(name)?;
        self.required(name, value)
    }

    /// An optional enum member, given as a string and named by its serde spelling. QEMU names
    /// the bare member (not the dotted path) when the value is not one of the enum's.
    pub(crate) fn opt_enum<T: DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<Option<T>, QmpError> {
        let Some(text) = self.opt_str(name)? else {
            return Ok(None);
        };
        enum_value(name, text).map(Some)
    }

    /// The members of object `map`, found in member `name` of this one.
    pub(crate) fn nested(&self, name: &str, map: Map<String, Value>) -> Args {
        Args {
            map,
            prefix: self.full_name(name),
        }
    }

    /// An optional nested object, read with its own unexpected-member check.
    pub(crate) fn opt_object(&mut self, name: &str) -> Result<Option<Args>, QmpError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(self.nested(name, map))),
            Some(_) => Err(QmpError::invalid_parameter_type(
                &self.full_name(name),
                "object",
            )),
        }
    }

    /// An optional list of enum values (QEMU names a bad element `null`).
    pub(crate) fn opt_enum_list<T: DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<Option<Vec<T>>, QmpError> {
        let items = match self.take(name) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(QmpError::invalid_parameter_type(
                    &self.full_name(name),
                    "array",
                ))
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let Value::String(text) = item else {
                let element = format!("{}[{index}]", self.full_name(name));
                return Err(QmpError::invalid_parameter_type(&element, "string"));
            };
            out.push(enum_value("null", text)?);
        }
        Ok(Some(out))
    }

    /// A member read the way `-device`/`-netdev` options are (QEMU's `qemu_opts_from_qdict`):
    /// strings as they are, numbers as their decimal text, booleans as `on`/`off`; objects,
    /// arrays and null are ignored.
    pub(crate) fn opt_opts_str(&mut self, name: &str) -> Option<String> {
        self.take(name).and_then(opts_string)
    }

    /// An option-style boolean: a JSON boolean, or `on`/`off`/`yes`/`no`/`true`/`false`.
    pub(crate) fn opt_opts_bool(&mut self, name: &str) -> Result<Option<bool>, QmpError> {
        let Some(text) = self.opt_opts_str(name) else {
            return Ok(None);
        };
        match text.as_str() {
            "on" | "yes" | "true" | "y" => Ok(Some(true)),
            "off" | "no" | "false" | "n" => Ok(Some(false)),
            _ => Err(QmpError::invalid_parameter_value(
                &self.full_name(name),
                "'on' or 'off'",
            )),
        }
    }

    /// An option-style unsigned 32-bit number: a JSON number or its decimal text.
    pub(crate) fn opt_opts_u32(&mut self, name: &str) -> Result<Option<u32>, QmpError> {
        let Some(text) = self.opt_opts_str(name) else {
            return Ok(None);
        };
        match text.parse::<u32>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(QmpError::invalid_parameter_value(
                &self.full_name(name),
                "uint32",
            )),
        }
    }
}

fn enum_value<T: DeserializeOwned>(name: &str, text: String) -> Result<T, QmpError> {
    serde_json::from_value(Value::String(text.clone()))
        .map_err(|_| QmpError::invalid_enum_value(name, &text))
}

/// QEMU's conversion of a QMP value into option text.
fn opts_string(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if b { "on" } else { "off" }.to_owned()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.` and `_`.
pub(crate) fn check_id(id: &str) -> Result<(), QmpError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        Ok(())
    } else {
        Err(QmpError::invalid_parameter_value("id", "an identifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Args {
        match value {
            Value::Object(map) => Args::new(map),
            other => panic!("test arguments must be an object, got {other}"),
        }
    }

    #[test]
    fn nested_member_errors_name_the_dotted_path() {
        let mut top = args(json!({"file": {"filename": 7}}));
        let mut file = top.opt_object("file").expect("object").expect("present");
        let err = file.req_str("filename").expect_err("wrong type");
        assert_eq!(
            err.desc,
            "Invalid parameter type for 'file.filename', expected: string"
        );
    }

    #[test]
    fn leftover_member_is_unexpected() {
        let mut a = args(json!({"fdname": "x", "bogus": 1}));
        a.req_str("fdname").expect("present");
        assert_eq!(
            a.finish().expect_err("leftover").desc,
            "Parameter 'bogus' is unexpected"
        );
    }

    #[test]
    fn integer_member_rejects_floats_and_strings() {
        let mut a = args(json!({"value": 1.5}));
        let err = a.req_int("value").expect_err("float");
        assert_eq!(
            err.desc,
            "Invalid parameter type for 'value', expected: integer"
        );
    }

    #[test]
    fn option_style_values_convert_like_qemu_opts() {
        let mut a = args(json!({"n": 4, "b": true, "o": {}}));
        assert_eq!(a.opt_opts_str("n"), Some("4".to_owned()));
        assert_eq!(a.opt_opts_str("b"), Some("on".to_owned()));
        assert_eq!(a.opt_opts_str("o"), None);
    }

    #[test]
    fn ids_must_start_with_a_letter() {
        assert!(check_id("drive-1.a_b").is_ok());
        let err = check_id("1drive").expect_err("digit first");
        assert_eq!(err.desc, "Parameter 'id' expects an identifier");
    }
}
