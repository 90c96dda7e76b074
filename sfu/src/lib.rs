//! Selective forwarding unit. Not built yet (issue #4); this crate only reserves the name and
//! place in the workspace.
