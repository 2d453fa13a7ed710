//! Daemon lifecycle (to be written).
