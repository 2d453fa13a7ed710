//! wire (to be written).
