//! Message boundaries on stream transports (TCP, TLS): a stream carries STUN messages and
//! ChannelData frames back to back (RFC 8656 §12.5). The first two bits tell them apart:
//! `00` STUN (20-byte header + length), `01` ChannelData (4-byte header + length, padded
//! to a multiple of 4 on streams).

/// Why the next bytes of a stream cannot be a TURN frame (close the connection).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FramingError {
    /// The first two bits are `10` or `11`: neither STUN nor ChannelData.
    #[error("stream byte {0:#04x} starts neither a STUN message nor a ChannelData frame")]
    NotTurn(u8),
    /// A STUN length field that is not a multiple of 4.
    #[error("STUN length {0} is not a multiple of 4")]
    UnalignedStunLength(u16),
}

/// Length of the next frame at the start of `buf`, including ChannelData padding.
///
/// - `None`: fewer than 4 bytes buffered; read more.
/// - `Some(Ok(n))`: the frame is `n` bytes (possibly more than `buf.len()`: wait until `n`
///   bytes are buffered, then hand `buf[..n]` to [`super::TurnServer::on_client`]).
/// - `Some(Err(_))`: the stream is not TURN; close it.
pub fn frame_len(buf: &[u8]) -> Option<Result<usize, FramingError>> {
    let [b0, b1, l0, l1] = *buf.first_chunk::<4>()?;
    let len = u16::from_be_bytes([l0, l1]);
    Some(match b0 >> 6 {
        0b00 if len % 4 != 0 => Err(FramingError::UnalignedStunLength(len)),
        0b00 => Ok(20 + usize::from(len)),
        0b01 => Ok(4 + usize::from(len).next_multiple_of(4)),
        _ => {
            let _ = b1;
            Err(FramingError::NotTurn(b0))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_channel_data_lengths() {
        assert_eq!(frame_len(&[0, 1, 0]), None);
        assert_eq!(frame_len(&[0x00, 0x03, 0x00, 0x08]), Some(Ok(28)));
        assert_eq!(
            frame_len(&[0x00, 0x03, 0x00, 0x06]),
            Some(Err(FramingError::UnalignedStunLength(6)))
        );
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2]), Some(Ok(12)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x08]), Some(Ok(12)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x00]), Some(Ok(4)));
        assert_eq!(
            frame_len(&[0x80, 0, 0, 0]),
            Some(Err(FramingError::NotTurn(0x80)))
        );
        assert_eq!(
            frame_len(&[0xC0, 0, 0, 0]),
            Some(Err(FramingError::NotTurn(0xC0)))
        );
    }
}
