//! What the benchmark programs (`turn-bench`, `signaling-bench`, `sfu-bench`) share: the latency
//! histogram and its percentile summary with the measurement window (`stats`), the `/proc`
//! readers that count CPU time and memory of the process under test (`procfs`), and the
//! number formatting and ratios of their reports (`report`).

pub mod histogram;
pub mod procfs;
pub mod prom;
pub mod report;
pub mod stats;
