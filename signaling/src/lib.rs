//! Signaling: session server and channel servers. Not built yet (issue #3); this crate only
//! reserves the name and place in the workspace.
