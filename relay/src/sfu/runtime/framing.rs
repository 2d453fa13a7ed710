//! RFC 4571 framing of ICE-TCP (RFC 6544 §3): on a TCP connection every STUN, DTLS and
//! SRTP packet travels as a 2-byte big-endian length followed by that many bytes.
//!
//! Why a module of its own: TCP delivers a byte stream, so a read may end inside a
//! length, inside a packet, or hold many packets; [`FrameReader`] reassembles them in a
//! fixed buffer allocated once per connection (nothing per packet), and refuses a frame
//! longer than the media engine accepts (the caller then closes the connection: a peer
//! that sends one is broken or hostile, and resynchronising a byte stream is guesswork).
//! Sans-IO, so it is unit tested and fuzzed without sockets.

/// Bytes of the length prefix.
pub const HEADER: usize = 2;
/// Bytes a reader buffers at most (several small frames per read; at least one whole
/// frame of the largest accepted size fits).
pub const READ_BUFFER: usize = 4096;

/// Why a stream cannot be read any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix announced more than the largest packet accepted.
    #[error("an RFC 4571 frame of {len} bytes is longer than the {max} accepted")]
    Oversize {
        /// The announced length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
}

/// Reassembles RFC 4571 frames from the bytes of one connection.
///
/// Use: read from the socket into [`FrameReader::spare`], report the count with
/// [`FrameReader::commit`], then take every complete frame with
/// [`FrameReader::next_frame`] until it returns `Ok(None)`. Zero-length frames are legal
/// and skipped.
#[derive(Debug)]
pub struct FrameReader {
    buf: Box<[u8]>,
    /// First unconsumed byte.
    start: usize,
    /// End of the received bytes.
    end: usize,
    max_frame: usize,
}

impl FrameReader {
    /// A reader accepting frames of at most `max_frame` bytes (its buffer is allocated
    /// here, once).
    pub fn new(max_frame: usize) -> FrameReader {
        let size = READ_BUFFER.max(HEADER + max_frame);
        FrameReader {
            buf: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Where the next read goes. Moves a partial frame to the front first, so after
    /// every complete frame was taken there is always room (the buffer holds a whole
    /// frame of the largest accepted size). Empty only while complete frames wait.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// `n` bytes were read into [`FrameReader::spare`] (clamped to its length).
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not yet returned as frames (a partial frame).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next complete frame's payload, `Ok(None)` when more bytes are needed, or an
    /// error for a frame longer than the maximum (the stream cannot be used any more;
    /// every later call returns the same error).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(&[hi, lo]) = avail.first_chunk::<HEADER>() else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len > self.max_frame {
                return Err(FrameError::Oversize {
                    len,
                    max: self.max_frame,
                });
            }
            if avail.len() < HEADER + len {
                return Ok(None);
            }
            let from = self.start + HEADER;
            self.start = from + len;
            if len == 0 {
                continue;
            }
            return Ok(self.buf.get(from..from + len));
        }
    }
}

/// The length prefix of a `len`-byte packet; None when it does not fit 16 bits.
pub fn frame_header(len: usize) -> Option<[u8; HEADER]> {
    u16::try_from(len).ok().map(u16::to_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(packets: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            out.extend_from_slice(&frame_header(p.len()).expect("fits"));
            out.extend_from_slice(p);
        }
        out
    }

    /// Feeds `bytes` in chunks of `step`, collecting every frame.
    fn feed(r: &mut FrameReader, bytes: &[u8], step: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut frames = Vec::new();
        for chunk in bytes.chunks(step) {
            let spare = r.spare();
            assert!(spare.len() >= chunk.len(), "room for the read");
            spare[..chunk.len()].copy_from_slice(chunk);
            r.commit(chunk.len());
            while let Some(f) = r.next_frame()? {
                frames.push(f.to_vec());
            }
        }
        Ok(frames)
    }

    #[test]
    fn frames_split_across_reads_at_every_byte() {
        let a = vec![0xAA; 1500];
        let b = b"stun".to_vec();
        let bytes = framed(&[&a, &b]);
        for step in [1, 2, 3, 7, 1501, 1502, 1503] {
            let mut r = FrameReader::new(1500);
            let frames = feed(&mut r, &bytes, step).expect("valid");
            assert_eq!(frames, vec![a.clone(), b.clone()], "step {step}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn many_frames_in_one_read() {
        let packets: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let bytes = framed(&refs);
        assert!(bytes.len() < READ_BUFFER * 2);
        let mut r = FrameReader::new(1500);
        // Two big reads: frames end anywhere inside them.
        let frames = feed(&mut r, &bytes, READ_BUFFER).expect("valid");
        assert_eq!(frames, packets);
    }

    #[test]
    fn zero_length_frames_are_skipped() {
        let bytes = framed(&[b"", b"x", b"", b"", b"yz", b""]);
        let mut r = FrameReader::new(1500);
        let frames = feed(&mut r, &bytes, bytes.len()).expect("valid");
        assert_eq!(frames, vec![b"x".to_vec(), b"yz".to_vec()]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn oversize_frame_is_an_error_and_stays_one() {
        let mut r = FrameReader::new(1500);
        let mut bytes = framed(&[b"ok"]);
        bytes.extend_from_slice(&1501u16.to_be_bytes());
        bytes.extend_from_slice(&[0; 10]);
        let spare = r.spare();
        spare[..bytes.len()].copy_from_slice(&bytes);
        r.commit(bytes.len());
        assert_eq!(r.next_frame().expect("first is fine"), Some(&b"ok"[..]));
        let err = FrameError::Oversize {
            len: 1501,
            max: 1500,
        };
        assert_eq!(r.next_frame(), Err(err));
        assert_eq!(r.next_frame(), Err(err));
        // The largest accepted frame is fine.
        let mut r = FrameReader::new(1500);
        let big = vec![1u8; 1500];
        assert_eq!(feed(&mut r, &framed(&[&big]), 100).expect("max"), vec![big]);
    }

    #[test]
    fn length_split_across_reads() {
        let bytes = framed(&[&[5u8; 300]]);
        let mut r = FrameReader::new(1500);
        assert_eq!(
            feed(&mut r, &bytes[..1], 1).expect("ok"),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(r.buffered(), 1);
        let frames = feed(&mut r, &bytes[1..], 1000).expect("ok");
        assert_eq!(frames, vec![vec![5u8; 300]]);
    }

    #[test]
    fn a_partial_frame_always_leaves_room_to_finish() {
        // The buffer is full of small frames and ends in a partial maximal one: after the
        // small ones are taken, the rest of the big one fits.
        let small: Vec<Vec<u8>> = (0..((READ_BUFFER - 1000) / 12))
            .map(|_| vec![3u8; 10])
            .collect();
        let big = vec![4u8; 1500];
        let mut refs: Vec<&[u8]> = small.iter().map(Vec::as_slice).collect();
        refs.push(&big);
        let bytes = framed(&refs);
        let mut r = FrameReader::new(1500);
        let frames = feed(&mut r, &bytes, READ_BUFFER).expect("ok");
        assert_eq!(frames.len(), small.len() + 1);
        assert_eq!(frames.last(), Some(&big));
    }

    #[test]
    fn header_of_too_long_packet_is_none() {
        assert_eq!(frame_header(65_535), Some([0xFF, 0xFF]));
        assert_eq!(frame_header(65_536), None);
        assert_eq!(frame_header(258), Some([1, 2]));
    }
}
