//! The simple video layer policy of the first SFU: per receiver, the dominant speaker's
//! camera at the high simulcast layer and everyone else's one step lower (the middle
//! layer: a grid tile, not a thumbnail); screen shares always high (text must stay
//! readable); a receiver's explicit cap from signaling wins, down to the low layer.
//! The bandwidth-driven allocator replaces this later; its inputs stay the same.

/// The low simulcast layer.
pub const LOW: u8 = 0;
/// The middle simulcast layer: what non-dominant cameras get.
pub const MID: u8 = 1;
/// The high simulcast layer.
pub const HIGH: u8 = 2;

/// What a video track shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// A camera.
    Camera,
    /// A screen share.
    ScreenShare,
}

/// The layer a receiver should get of a video track.
///
/// `layers` is how many simulcast layers the track has (1 without simulcast; 0 is taken
/// as 1), `publisher_is_dominant` whether its publisher is the dominant speaker, and
/// `max_layer` the receiver's cap from signaling, if any.
pub fn target_layer(
    kind: TrackKind,
    layers: u8,
    publisher_is_dominant: bool,
    max_layer: Option<u8>,
) -> u8 {
    let wanted = match kind {
        TrackKind::ScreenShare => HIGH,
        TrackKind::Camera if publisher_is_dominant => HIGH,
        TrackKind::Camera => MID,
    };
    let top = layers.max(1) - 1;
    wanted.min(top).min(max_layer.unwrap_or(u8::MAX))
}

/// One receiver's layer preferences, as signaling set them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverLayers {
    /// The highest layer this receiver accepts of any track (`None`: no cap).
    pub max_layer: Option<u8>,
}

impl ReceiverLayers {
    /// The layer this receiver should get of a track published by `publisher`, given the
    /// room's current dominant speaker.
    pub fn target<Id: PartialEq>(
        &self,
        kind: TrackKind,
        layers: u8,
        publisher: Id,
        dominant: Option<Id>,
    ) -> u8 {
        let is_dominant = dominant.is_some_and(|d| d == publisher);
        target_layer(kind, layers, is_dominant, self.max_layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_high_others_middle() {
        assert_eq!(target_layer(TrackKind::Camera, 3, true, None), 2);
        assert_eq!(target_layer(TrackKind::Camera, 3, false, None), MID);
        assert_eq!(target_layer(TrackKind::Camera, 3, false, Some(LOW)), LOW);
    }

    #[test]
    fn screen_share_always_high() {
        assert_eq!(target_layer(TrackKind::ScreenShare, 3, false, None), 2);
        assert_eq!(target_layer(TrackKind::ScreenShare, 3, true, None), 2);
    }

    #[test]
    fn receiver_cap_wins() {
        assert_eq!(target_layer(TrackKind::ScreenShare, 3, false, Some(1)), 1);
        assert_eq!(target_layer(TrackKind::Camera, 3, true, Some(0)), 0);
        assert_eq!(target_layer(TrackKind::Camera, 3, false, Some(2)), MID);
    }

    #[test]
    fn fewer_layers_clamp() {
        assert_eq!(target_layer(TrackKind::Camera, 1, true, None), 0);
        assert_eq!(target_layer(TrackKind::Camera, 0, true, None), 0);
        assert_eq!(target_layer(TrackKind::ScreenShare, 2, false, None), 1);
    }

    #[test]
    fn receiver_struct_uses_dominant() {
        let r = ReceiverLayers { max_layer: None };
        assert_eq!(r.target(TrackKind::Camera, 3, 7u32, Some(7)), 2);
        assert_eq!(r.target(TrackKind::Camera, 3, 8u32, Some(7)), MID);
        assert_eq!(r.target(TrackKind::Camera, 3, 8u32, None), MID);
        assert_eq!(r.target(TrackKind::Camera, 2, 8u32, None), MID);
        let capped = ReceiverLayers { max_layer: Some(1) };
        assert_eq!(capped.target(TrackKind::Camera, 3, 7u32, Some(7)), 1);
    }
}
