//! The SFU's forwarding decisions: codec keyframes, per-receiver layer rewriting, speaker
//! detection. (Being written: issue 5.)
