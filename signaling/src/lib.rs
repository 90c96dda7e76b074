//! turnkey signaling: a session server (HTTP: rooms, joins, TURN credentials) and channel
//! servers (WebSocket: relays offers, answers and candidates within a room) over a shared
//! [`store`], embedded in memory or in Redis. The wire protocol is in `PROTOCOL.md`.

pub mod store;
