//! Embedded in-memory store (single node). Placeholder until written.
