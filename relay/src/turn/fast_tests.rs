//! Unit tests of the fast-path rule computation (filled in next).
