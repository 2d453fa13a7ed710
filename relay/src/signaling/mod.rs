//! Signaling: join tokens and the WebSocket message schema. (Being written: issue 5.)
