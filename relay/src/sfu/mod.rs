//! The SFU's forwarding decisions, sans-IO (packets' numbers, payload bytes and time in;
//! decisions out), for the workers to call per packet:
//!
//! - [`codec`]: keyframe and frame-start detection in VP8, H.264 and Opus payloads, and
//!   in-place rewriting of VP8 picture ids;
//! - [`rewrite`]: per-receiver sequence number, timestamp and picture-id rewriting so a
//!   receiver sees one continuous stream while the SFU switches simulcast layers (at
//!   keyframes) or the speakers of an audio slot;
//! - [`speaker`]: audio levels in, dominant speaker and the N loudest speakers out;
//! - [`select`]: which simulcast layer each receiver should get of each video track.

pub mod codec;
pub mod control;
pub mod engine;
pub mod history;
pub mod keyframe;
pub mod reports;
pub mod rewrite;
pub mod rtx;
pub mod runtime;
pub mod select;
pub mod shards;
pub mod speaker;
pub mod transport;
