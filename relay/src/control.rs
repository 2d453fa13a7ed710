//! Control socket (to be written).
