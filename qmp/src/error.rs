//! QMP error replies: the error class and the human-readable description, worded as QEMU words
//! them so that scripts matching on `desc` keep working.

use serde::{Deserialize, Serialize};

/// The `class` member of an error reply (QAPI's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorClass {
    /// Every error without a more specific class.
    GenericError,
    /// The command does not exist, or is not allowed in the current mode.
    CommandNotFound,
    /// The device exists but is not active (e.g. `balloon` without a balloon device).
    DeviceNotActive,
    /// The named device does not exist.
    DeviceNotFound,
    /// KVM lacks a capability the command needs.
    #[serde(rename = "KVMMissingCap")]
    KvmMissingCap,
}

impl ErrorClass {
    /// The class name exactly as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KvmMissingCap => "KVMMissingCap",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a reply: `{"class": ..., "desc": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{desc}")]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// The description shown to the user.
    pub desc: String,
}

impl QmpError {
    /// An error of `class` with `desc`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::GenericError, desc)
    }

    /// A `DeviceNotActive` error.
    pub fn device_not_active(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::DeviceNotActive, desc)
    }

    /// A `KVMMissingCap` error.
    pub fn kvm_missing_cap(desc: impl Into<String>) -> QmpError {
        QmpError::new(ErrorClass::KvmMissingCap, desc)
    }

    /// QEMU's `DeviceNotFound` error for `device`: "Device 'x' not found".
    pub fn device_not_found(device: &str) -> QmpError {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{device}' not found"),
        )
    }

    /// QEMU's reply to an unknown command: "The command foo has not been found".
    pub fn command_not_found(command: &str) -> QmpError {
        QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {command} has not been found"),
        )
    }

    /// "Parameter 'x' is missing".
    pub fn missing_parameter(name: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' is missing"))
    }

    /// "Invalid parameter type for 'x', expected: string".
    pub fn invalid_parameter_type(name: &str, expected: &str) -> QmpError {
        QmpError::generic(format!(
            "Invalid parameter type for '{name}', expected: {expected}"
        ))
    }

    /// "Parameter 'x' expects <what>".
    pub fn invalid_parameter_value(name: &str, expected: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' expects {expected}"))
    }

    /// "Parameter 'x' is unexpected".
    pub fn unexpected_parameter(name: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{name}' is unexpected"))
    }

    /// "Parameter 'x' does not accept value 'y'" (QEMU names the bare member, or `null` for a
    /// list element).
    pub fn invalid_enum_value(name: &str, value: &str) -> QmpError {
        QmpError::generic(format!(
            "Parameter '{name}' does not accept value '{value}'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_class_serialises_to_its_qemu_name() {
        let classes = [
            (ErrorClass::GenericError, "GenericError"),
            (ErrorClass::CommandNotFound, "CommandNotFound"),
            (ErrorClass::DeviceNotActive, "DeviceNotActive"),
            (ErrorClass::DeviceNotFound, "DeviceNotFound"),
            (ErrorClass::KvmMissingCap, "KVMMissingCap"),
        ];
        for (class, name) in classes {
            let json = serde_json::to_string(&class).expect("enum serialises");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(class.as_str(), name);
            let back: ErrorClass = serde_json::from_str(&json).expect("round trip");
            assert_eq!(back, class);
        }
    }

    #[test]
    fn error_serialises_as_class_then_desc() {
        let err = QmpError::device_not_found("disk1");
        let json = serde_json::to_string(&err).expect("struct serialises");
        assert_eq!(
            json,
            r#"{"class":"DeviceNotFound","desc":"Device 'disk1' not found"}"#
        );
    }

    #[test]
    fn parameter_errors_use_qemu_wording() {
        assert_eq!(
            QmpError::missing_parameter("fdname").desc,
            "Parameter 'fdname' is missing"
        );
        assert_eq!(
            QmpError::invalid_parameter_type("file.filename", "string").desc,
            "Invalid parameter type for 'file.filename', expected: string"
        );
        assert_eq!(
            QmpError::unexpected_parameter("x").desc,
            "Parameter 'x' is unexpected"
        );
        assert_eq!(
            QmpError::invalid_enum_value("aio", "fast").desc,
            "Parameter 'aio' does not accept value 'fast'"
        );
    }
}
