//! dataplane (to be written).
