//! The sans-IO signaling core: message types and validation ([`msg`]), per-connection rate
//! limiting ([`limit`]), room names ([`room`]), the browser origin policy ([`origin`]) and the local participant table with resume
//! grace periods ([`hub`]).
//! Nothing here touches a socket or reads the clock; time is passed in.

pub mod hub;
pub mod limit;
pub mod msg;
pub mod origin;
pub mod room;
pub mod sfu_link;
