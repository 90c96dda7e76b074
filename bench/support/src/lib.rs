//! What the benchmark programs (`turn-bench`, `signaling-bench`, `sfu-bench`) share: the latency
//! histogram and the `/proc` readers that count CPU time and memory of the process under test.

pub mod histogram;
pub mod procfs;
