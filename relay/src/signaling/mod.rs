//! Signaling: who may join a room (signed join tokens, `token`) and the JSON messages
//! clients and the server exchange over the WebSocket (`protocol`).
//!
//! Exists so the SFU and the P2P mode share one authenticated, size-capped, validated
//! message layer. Sans-IO: bytes in, typed messages or stable error codes out; the
//! WebSocket server and the room state live elsewhere. docs/SIGNALING.md is the
//! reference for client authors.

pub mod protocol;
pub mod rooms;
pub mod server;
pub mod token;

pub use protocol::{
    ClientMessage, ErrorCode, IceServer, MAX_MESSAGE_LEN, Mode, Participant, ProtocolError,
    PublishTrack, ServerMessage, Source, Target, TrackInfo, TrackKind, authorize_join, ice_servers,
    parse_client, parse_server,
};
pub use token::{Claims, MAX_TOKEN_LEN, TokenError, sign, verify};
