//! Redis store. Placeholder until written.
