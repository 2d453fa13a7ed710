//! Fuzzes the SFU's RTX path on arbitrary datagrams: `unwrap` and `unwrap_in_place`
//! (a publisher's RTX packet) and `wrap` (a cached packet retransmitted to a receiver)
//! must never panic, must agree, and a wrapped packet must unwrap to its original
//! payload and the OSN it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::rtp::RtpView;
use relay::sfu::rtx::{RtxError, unwrap, unwrap_in_place, wrap};

fuzz_target!(|data: &[u8]| {
    // Room for any output (wrap adds two bytes), so that the copying and the in-place
    // unwrap are compared on what they decide, not on the buffer given.
    let mut out = vec![0u8; data.len() + 2];
    let outer = unwrap(data, &mut out, 0x1234_5678, 96);
    // Half the room: the same answer or a clear BufferTooSmall, never a panic.
    let mut half = vec![0u8; data.len() / 2];
    match (unwrap(data, &mut half, 0x1234_5678, 96), &outer) {
        (Ok(a), Ok(b)) => assert_eq!(a, *b),
        (Err(RtxError::BufferTooSmall { .. }), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, *b),
        (a, b) => panic!("unwrap into half the room {a:?}, into enough {b:?}"),
    }
    let mut copy = data.to_vec();
    let inner = unwrap_in_place(&mut copy, 0x1234_5678, 96);
    match (outer, inner) {
        (Ok((n, osn)), Ok((m, osn2))) => {
            assert_eq!((n, osn), (m, osn2));
            assert_eq!(&out[..n], &copy[..m]);
            let v = RtpView::parse(&out[..n]).expect("recovered packet parses");
            assert_eq!(
                (v.ssrc(), v.payload_type(), v.sequence()),
                (0x1234_5678, 96, osn)
            );
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("unwrap {a:?} but in place {b:?}"),
    }
    if let Ok(n) = wrap(data, &mut out, 0x0BAD_CAFE, 97, 5, 4242) {
        let original = RtpView::parse(data).expect("wrap accepted it");
        let mut back = vec![0u8; n];
        let (m, osn) = unwrap(&out[..n], &mut back, 1, 96).expect("own RTX unwraps");
        assert_eq!(osn, 4242);
        let v = RtpView::parse(&back[..m]).expect("parses");
        assert_eq!(v.payload(), original.payload());
        assert_eq!(v.header_len(), original.header_len());
    }
});
