//! SRTP and SRTCP (RFC 3711, RFC 7714): protecting and unprotecting media in place, one
//! session per direction of a DTLS-SRTP association. (Being written: issue 5.)
