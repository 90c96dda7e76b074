//! Sans-IO STUN (RFC 8489): message validation and building, integrity and fingerprint, stream
//! framing (RFC 8489 §6.2.2, RFC 8656 §11.5), the Binding handler with RFC 5780 NAT behaviour
//! discovery, the long-term credential key and TURN REST credentials.
//!
//! No tokio, no sockets, no clock in here: the caller passes the time and owns the I/O.
//!
//! - [`msg`]: decoding, [`msg::MessageBuilder`], [`msg::Transport`], [`msg::stream_frame_len`].
//! - [`binding`]: the Binding request handler and its typed results and drop reasons.
//! - [`credential`]: long-term keys, USERHASH, REST credential mint/verify.

pub mod binding;
pub mod credential;
pub mod msg;
