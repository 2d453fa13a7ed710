//! SDP offer/answer with browsers (RFC 8866, RFC 8829). (Being written: issue 5.)
