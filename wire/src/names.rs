//! Validation of names where they enter the system.
//!
//! Topic names become directory names on every broker, so they are limited to
//! a safe character set: ASCII letters, digits, `.`, `_` and `-`. That set has
//! no `/`, NUL or non-UTF-8 byte by construction, and the names `.` and `..`
//! are refused explicitly.

use crate::error::{Result, WireError};

/// Longest topic name. 249 as in Kafka: a partition directory is
/// `<topic>-<partition>` and must stay under the common 255-byte file-name
/// limit with room for a 5-digit partition number.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Longest consumer-group name or member id (not a file name, but bounded).
pub const GROUP_NAME_BYTES_MAX: usize = 255;

fn validate(field: &'static str, name: &str, max: usize) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > max {
        Some(format!("{} bytes, the maximum is {max}", name.len()))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} is reserved"))
    } else {
        name.bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
            .map(|b| {
                format!("byte {b:#04x} not allowed (use ASCII letters, digits, '.', '_', '-')")
            })
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(WireError::InvalidField { field, reason }),
    }
}

/// Checks a topic name (see the module docs for the rules).
pub fn validate_topic_name(name: &str) -> Result<()> {
    validate("topic", name, TOPIC_NAME_BYTES_MAX)
}

/// Checks a consumer-group name.
pub fn validate_group_name(name: &str) -> Result<()> {
    validate("group", name, GROUP_NAME_BYTES_MAX)
}

#[cfg(test)]
pub(crate) mod arb {
    //! proptest strategies for valid names.
    use proptest::prelude::*;

    pub fn topic() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,40}"
    }
    pub fn group() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,40}"
    }
    pub fn topics() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(topic(), 0..4)
    }
    pub fn opt_topics() -> impl Strategy<Value = Option<Vec<String>>> {
        proptest::option::of(topics())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["orders", "a", "orders.v2", "my_topic-1", &"x".repeat(249)] {
            validate_topic_name(name).unwrap();
        }
    }

    #[test]
    fn refuses_names_that_could_escape_or_break_a_directory() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "../etc",
            "a\0b",
            "naïve",
            "sp ace",
            "tab\t",
            &"x".repeat(250),
        ] {
            let err = validate_topic_name(name).unwrap_err();
            assert!(
                matches!(err, WireError::InvalidField { field: "topic", .. }),
                "{name:?}"
            );
        }
        assert!(validate_group_name(&"g".repeat(256)).is_err());
        validate_group_name(&"g".repeat(255)).unwrap();
    }
}
