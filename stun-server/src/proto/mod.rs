//! Sans-IO STUN: message validation, response building, integrity, and the Binding handler.
//! No tokio, no sockets, no clock in here.

pub mod binding;
pub mod msg;
