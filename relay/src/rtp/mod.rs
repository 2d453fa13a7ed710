//! RTP and RTCP on the wire: zero-copy views, header extensions, RTCP feedback builders.
//! (Being written: issue 5.)
