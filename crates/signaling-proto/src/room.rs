//! Room names (`PROTOCOL.md`, "Room names"): 1 to [`ROOM_NAME_MAX_BYTES`] characters of
//! `[A-Za-z0-9._-]`. Every route checks a name with [`check_room_name`] before it becomes part
//! of a store key (`turnkey:room:{name}` in Redis), a URL or a log line.

/// Longest room name, in bytes (= characters: the charset is ASCII).
pub const ROOM_NAME_MAX_BYTES: usize = 128;

/// The rule, as told to clients in error messages.
pub const ROOM_NAME_RULE: &str = "room name must be 1..=128 characters of [A-Za-z0-9._-]";

/// Why a room name was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomNameError {
    /// Empty.
    #[error("{ROOM_NAME_RULE}: it is empty")]
    Empty,
    /// Longer than [`ROOM_NAME_MAX_BYTES`].
    #[error("{ROOM_NAME_RULE}: it has {0} bytes")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("{ROOM_NAME_RULE}: it has another character")]
    BadCharacter,
}

/// Checks `name` against the rule.
pub fn check_room_name(name: &str) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > ROOM_NAME_MAX_BYTES {
        return Err(RoomNameError::TooLong(name.len()));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(RoomNameError::BadCharacter);
    }
    Ok(())
}

/// True if `name` follows the rule.
pub fn valid_room_name(name: &str) -> bool {
    check_room_name(name).is_ok()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn the_documented_charset_and_length() {
        for ok in ["demo", "a", "Room_1.2-3", &"x".repeat(ROOM_NAME_MAX_BYTES)] {
            assert_eq!(check_room_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_room_name(""), Err(RoomNameError::Empty));
        assert_eq!(
            check_room_name(&"x".repeat(ROOM_NAME_MAX_BYTES + 1)),
            Err(RoomNameError::TooLong(129))
        );
        for bad in [
            "a b", "a:b", "a/b", "a{b}", "é", "a\0", "a\nb", "*", "a%2Fb", "room?x=1",
        ] {
            assert_eq!(
                check_room_name(bad),
                Err(RoomNameError::BadCharacter),
                "{bad:?}"
            );
        }
        assert!(RoomNameError::TooLong(200).to_string().contains("1..=128"));
    }
}

/// Room topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomMode {
    /// Every participant connects to every other (WebRTC mesh).
    Mesh,
    /// Every participant connects to an SFU node.
    Sfu,
}
