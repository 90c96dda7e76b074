//! The turnkey suite in one process for local use: STUN + TURN, signaling (in-memory store, demo
//! page) and the SFU. [`cli::main`] is the `turnkey` executable's entry point (its one-line main
//! is in bin/); `dev` holds the development key, secret and certificate handling.

pub mod cli;
mod dev;
