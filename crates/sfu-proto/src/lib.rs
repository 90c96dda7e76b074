//! Sans-IO SFU core: no sockets, no tokio, no clock (`now` is passed in), no thread RNG (the
//! worker's RNG is seeded from its configuration).
//!
//! [`worker`] is the state machine; the decisions it takes each tick are pure modules with no
//! rtc types: [`bwe`] (loss-based estimate, probe pacing), [`layers`] (simulcast layer choice)
//! and [`speaker`] (active speaker). [`forward`] rewrites forwarded RTP, [`sdp`] reads and
//! edits SDP, [`demux`] routes datagrams to peer connections, [`peer`] builds them.
pub mod bwe;
pub mod demux;
pub mod direct;
pub mod dtls_flight;
pub mod forward;
pub mod layers;
pub mod limit;
pub mod media;
pub mod msg;
pub mod nack;
pub mod peer;
pub mod recv_side;
pub mod sdp;
pub mod send_side;
pub mod speaker;
pub mod worker;
