//! Sans-IO SFU core: no sockets, no tokio, no clock (`now` is passed in).
pub mod demux;
pub mod forward;
pub mod limit;
pub mod media;
pub mod msg;
pub mod peer;
pub mod worker;
