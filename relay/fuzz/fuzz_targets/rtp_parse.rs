//! Fuzzes the RTP read and rewrite path on arbitrary datagrams: header, CSRC list,
//! RFC 8285 extension walk, padding, the extension decoders and the in-place rewriter
//! must never panic, and what `parse` accepts must stay within the datagram.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::rtp::ext::{ExtMap, audio_level, sdes_mid, sdes_rid, transport_sequence};
use relay::rtp::{RtpMut, RtpView, classify};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let map = ExtMap {
        audio_level: Some(1),
        transport_cc: Some(3),
        mid: Some(4),
        rid: Some(10),
        repaired_rid: Some(11),
        abs_send_time: Some(2),
    };
    if let Ok(v) = RtpView::parse(data) {
        assert!(v.header_len() + v.padding_len() <= data.len());
        assert_eq!(
            v.payload().len(),
            data.len() - v.header_len() - v.padding_len()
        );
        let _ = v.csrcs().count();
        for (_, value) in v.extensions() {
            let _ = audio_level(value);
            let _ = transport_sequence(value);
            let _ = sdes_mid(value);
            let _ = sdes_rid(value);
        }
        let _ = map.read(&v);
    }
    let mut copy = data.to_vec();
    if let Ok(mut m) = RtpMut::parse(&mut copy) {
        m.set_ssrc(0x1234_5678);
        m.set_sequence(7);
        m.set_timestamp(9);
        m.set_marker(true);
        let _ = m.set_payload_type(100);
        let first = m.view().extensions().next().map(|(id, v)| (id, v.len()));
        if let Some((id, len)) = first {
            let value = [0xAAu8; 256];
            m.set_extension(id, &value[..len]).expect("same length");
            assert_eq!(m.view().extension(id), Some(&value[..len]));
        }
        let v = m.view();
        assert_eq!((v.ssrc(), v.sequence(), v.timestamp()), (0x1234_5678, 7, 9));
    }
});
