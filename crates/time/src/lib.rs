//! Time without a clock, for the protocol crates: every function takes `now` from the caller,
//! so cores stay sans-IO and tests run in virtual time.
//!
//! - [`rate`]: token buckets (events, or bytes for bandwidth caps) and log limiters.
//! - [`timers`]: a table of deadlines with one entry per key (timers as data).

pub mod rate;
pub mod timers;
