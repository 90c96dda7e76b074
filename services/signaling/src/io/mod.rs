//! The tokio/axum layer of signaling around the sans-IO core (`signaling-proto`):
//! - [`http`]: the session role (rooms, joins, TURN credentials, the demo page and client);
//! - [`channel`]: the channel role (a participant's WebSocket through the core);
//! - [`node`]: one node's shared state, the registry and the cross-node fan-out;
//! - [`sfu_link`]: placement of `sfu` rooms on SFU nodes and the per-participant links to them;
//! - [`tls`]: HTTPS/WSS on the listener.

pub mod channel;
pub mod http;
pub mod node;
pub mod sfu_link;
pub mod tls;
