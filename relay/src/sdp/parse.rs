//! Reading session descriptions: strict with the attributes the SFU acts on (a malformed
//! fingerprint or rtpmap is an error naming the line), lenient with everything else
//! (unknown attributes and line types are kept verbatim).

use super::model::{
    Candidate, Direction, Extmap, Fingerprint, Fmtp, Group, MediaDescription, MediaKind, Msid,
    Origin, Proto, Rid, RidDirection, RtcpFb, RtpMap, SessionDescription, Setup, Simulcast,
    SimulcastRid, SsrcAttr, SsrcGroup,
};

/// Largest description accepted: 1 MiB, the signaling cap of `offer` and `answer`
/// messages. A subscriber's description has one m-section per subscribed track, at
/// 300-900 bytes each in a browser's answer: a 200-participant room needs about 200 KiB.
pub const MAX_SDP_LEN: usize = 1024 * 1024;

/// Most `m=` sections accepted in one description: every participant's audio and camera
/// and a screen share in a room of a few hundred.
pub const MAX_MEDIA_SECTIONS: usize = 1024;

/// What was wrong with a session description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP_LEN`].
    #[error("session description is {0} bytes, more than {MAX_SDP_LEN}")]
    TooLarge(usize),
    /// More than [`MAX_MEDIA_SECTIONS`] `m=` lines.
    #[error("line {line}: more than {MAX_MEDIA_SECTIONS} media sections")]
    TooManySections {
        /// 1-based line number.
        line: usize,
    },
    /// The first line is not `v=0`.
    #[error("line {line}: expected v=0")]
    NoVersion {
        /// 1-based line number.
        line: usize,
    },
    /// A line that is not `<letter>=<value>`.
    #[error("line {line}: not a <type>=<value> line")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A line the SFU uses whose value does not parse.
    #[error("line {line}: bad {what}")]
    Bad {
        /// 1-based line number.
        line: usize,
        /// Which field (`m=`, `a=fingerprint`, ...).
        what: &'static str,
    },
    /// A required session line is missing.
    #[error("missing {0} line")]
    Missing(&'static str),
}

fn bad(line: usize, what: &'static str) -> SdpError {
    SdpError::Bad { line, what }
}

impl std::str::FromStr for SessionDescription {
    type Err = SdpError;

    fn from_str(s: &str) -> Result<Self, SdpError> {
        parse(s)
    }
}

/// Parses a session description (CRLF or LF line ends).
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge(text.len()));
    }
    let mut sd = SessionDescription::default();
    let mut saw_version = false;
    let mut saw_origin = false;
    for (index, raw) in text.split('\n').enumerate() {
        let n = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let b = line.as_bytes();
        if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
            return Err(SdpError::Syntax { line: n });
        }
        let (kind, value) = (b[0], &line[2..]);
        if !saw_version {
            if kind != b'v' || value != "0" {
                return Err(SdpError::NoVersion { line: n });
            }
            saw_version = true;
            continue;
        }
        match kind {
            b'm' => {
                if sd.media.len() >= MAX_MEDIA_SECTIONS {
                    return Err(SdpError::TooManySections { line: n });
                }
                sd.media.push(parse_m(value, n)?);
            }
            b'o' if sd.media.is_empty() => {
                sd.origin = parse_origin(value, n)?;
                saw_origin = true;
            }
            b's' if sd.media.is_empty() => sd.session_name = value.to_owned(),
            b'c' => match sd.media.last_mut() {
                Some(m) => m.connection = Some(value.to_owned()),
                None => sd.connection = Some(value.to_owned()),
            },
            b'a' => match sd.media.last_mut() {
                Some(m) => media_attribute(m, value, n)?,
                None => session_attribute(&mut sd, value, n)?,
            },
            b'v' => return Err(bad(n, "v= (repeated)")),
            _ => match sd.media.last_mut() {
                Some(m) => m.other.push(line.to_owned()),
                None => sd.other.push(line.to_owned()),
            },
        }
    }
    if !saw_version {
        return Err(SdpError::Missing("v="));
    }
    if !saw_origin {
        return Err(SdpError::Missing("o="));
    }
    Ok(sd)
}

fn parse_origin(value: &str, n: usize) -> Result<Origin, SdpError> {
    let mut it = value.split(' ');
    let (Some(user), Some(id), Some(version), Some(net), Some(addr_type), Some(addr), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(bad(n, "o="));
    };
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(n, "o= session id"));
    }
    let session_version = version.parse().map_err(|_| bad(n, "o= session version"))?;
    Ok(Origin {
        username: user.to_owned(),
        session_id: id.to_owned(),
        session_version,
        address: format!("{net} {addr_type} {addr}"),
    })
}

fn parse_m(value: &str, n: usize) -> Result<MediaDescription, SdpError> {
    let mut it = value.split(' ');
    let (Some(kind), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
        return Err(bad(n, "m="));
    };
    // `port/count` is legal syntax; WebRTC uses one port.
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| bad(n, "m= port"))?;
    let formats: Vec<String> = it.filter(|f| !f.is_empty()).map(str::to_owned).collect();
    if kind.is_empty() || proto.is_empty() || formats.is_empty() {
        return Err(bad(n, "m="));
    }
    let proto = Proto::parse(proto);
    if proto == Proto::UdpTlsRtpSavpf
        && formats
            .iter()
            .any(|f| f.parse::<u8>().ok().filter(|p| *p < 128).is_none())
    {
        return Err(bad(n, "m= payload type"));
    }
    Ok(MediaDescription::new(
        MediaKind::parse(kind),
        port,
        proto,
        formats,
    ))
}

fn session_attribute(sd: &mut SessionDescription, value: &str, n: usize) -> Result<(), SdpError> {
    let (name, arg) = split_attr(value);
    match (name, arg) {
        ("group", Some(a)) => sd.groups.push(parse_group(a, n)?),
        ("ice-ufrag", Some(a)) => sd.ice_ufrag = Some(ice_token(a, n, "a=ice-ufrag")?),
        ("ice-pwd", Some(a)) => sd.ice_pwd = Some(ice_token(a, n, "a=ice-pwd")?),
        ("ice-options", Some(a)) => sd.ice_options = words(a),
        ("ice-lite", None) => sd.ice_lite = true,
        ("fingerprint", Some(a)) => sd.fingerprints.push(parse_fingerprint(a, n)?),
        ("setup", Some(a)) => sd.setup = Some(Setup::parse(a).ok_or(bad(n, "a=setup"))?),
        ("extmap", Some(a)) => sd.extmaps.push(parse_extmap(a, n)?),
        ("extmap-allow-mixed", None) => sd.extmap_allow_mixed = true,
        ("msid-semantic", Some(a)) => sd.msid_semantic = Some(a.trim_start().to_owned()),
        (d, None) if Direction::parse(d).is_some() => sd.direction = Direction::parse(d),
        _ => sd.other.push(format!("a={value}")),
    }
    Ok(())
}

fn media_attribute(m: &mut MediaDescription, value: &str, n: usize) -> Result<(), SdpError> {
    let (name, arg) = split_attr(value);
    match (name, arg) {
        ("mid", Some(a)) => {
            if a.is_empty() || a.len() > 64 || a.contains(char::is_whitespace) {
                return Err(bad(n, "a=mid"));
            }
            m.mid = Some(a.to_owned());
        }
        ("ice-ufrag", Some(a)) => m.ice_ufrag = Some(ice_token(a, n, "a=ice-ufrag")?),
        ("ice-pwd", Some(a)) => m.ice_pwd = Some(ice_token(a, n, "a=ice-pwd")?),
        ("ice-options", Some(a)) => m.ice_options = words(a),
        ("fingerprint", Some(a)) => m.fingerprints.push(parse_fingerprint(a, n)?),
        ("setup", Some(a)) => m.setup = Some(Setup::parse(a).ok_or(bad(n, "a=setup"))?),
        ("rtcp-mux", None) => m.rtcp_mux = true,
        ("rtcp-rsize", None) => m.rtcp_rsize = true,
        ("extmap", Some(a)) => m.extmaps.push(parse_extmap(a, n)?),
        ("rtpmap", Some(a)) => {
            let map = parse_rtpmap(a, n)?;
            if m.rtpmap(map.payload_type).is_some() {
                return Err(bad(n, "a=rtpmap (payload type mapped twice)"));
            }
            m.rtpmaps.push(map);
        }
        ("fmtp", Some(a)) => {
            let (pt, params) = a.split_once(' ').ok_or(bad(n, "a=fmtp"))?;
            m.fmtps.push(Fmtp {
                payload_type: parse_pt(pt, n, "a=fmtp")?,
                params: params.trim().to_owned(),
            });
        }
        ("rtcp-fb", Some(a)) => m.rtcp_fbs.push(parse_rtcp_fb(a, n)?),
        ("ssrc", Some(a)) => m.ssrcs.push(parse_ssrc(a, n)?),
        ("ssrc-group", Some(a)) => {
            let mut it = a.split(' ').filter(|s| !s.is_empty());
            let semantics = it.next().ok_or(bad(n, "a=ssrc-group"))?.to_owned();
            let ssrcs = it
                .map(|s| s.parse::<u32>().map_err(|_| bad(n, "a=ssrc-group")))
                .collect::<Result<Vec<_>, _>>()?;
            if ssrcs.is_empty() {
                return Err(bad(n, "a=ssrc-group"));
            }
            m.ssrc_groups.push(SsrcGroup { semantics, ssrcs });
        }
        ("msid", Some(a)) => {
            let mut it = a.split(' ').filter(|s| !s.is_empty());
            let stream = it.next().ok_or(bad(n, "a=msid"))?.to_owned();
            let track = it.next().map(str::to_owned);
            m.msid = Some(Msid { stream, track });
        }
        ("rid", Some(a)) => m.rids.push(parse_rid(a, n)?),
        ("simulcast", Some(a)) => m.simulcast = Some(parse_simulcast(a, n)?),
        ("candidate", Some(a)) => m.candidates.push(parse_candidate(a, n)?),
        ("end-of-candidates", None) => m.end_of_candidates = true,
        ("sctp-port", Some(a)) => {
            m.sctp_port = Some(a.trim().parse().map_err(|_| bad(n, "a=sctp-port"))?);
        }
        ("max-message-size", Some(a)) => {
            m.max_message_size = Some(a.trim().parse().map_err(|_| bad(n, "a=max-message-size"))?);
        }
        (d, None) if Direction::parse(d).is_some() => m.direction = Direction::parse(d),
        _ => m.other.push(format!("a={value}")),
    }
    Ok(())
}

/// `name[:value]`.
fn split_attr(value: &str) -> (&str, Option<&str>) {
    match value.split_once(':') {
        Some((name, arg)) => (name, Some(arg)),
        None => (value, None),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// ICE ufrag/pwd: ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839), 1-256 chars.
fn ice_token(a: &str, n: usize, what: &'static str) -> Result<String, SdpError> {
    let a = a.trim();
    if a.is_empty()
        || a.len() > 256
        || !a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    {
        return Err(bad(n, what));
    }
    Ok(a.to_owned())
}

fn parse_pt(s: &str, n: usize, what: &'static str) -> Result<u8, SdpError> {
    s.parse::<u8>()
        .ok()
        .filter(|p| *p < 128)
        .ok_or(bad(n, what))
}

fn parse_group(a: &str, n: usize) -> Result<Group, SdpError> {
    let mut it = a.split(' ').filter(|s| !s.is_empty());
    let semantics = it.next().ok_or(bad(n, "a=group"))?.to_owned();
    Ok(Group {
        semantics,
        mids: it.map(str::to_owned).collect(),
    })
}

fn parse_fingerprint(a: &str, n: usize) -> Result<Fingerprint, SdpError> {
    let (hash, hex) = a.trim().split_once(' ').ok_or(bad(n, "a=fingerprint"))?;
    let value = hex
        .trim()
        .split(':')
        .map(|h| {
            if h.len() == 2 {
                u8::from_str_radix(h, 16).map_err(|_| bad(n, "a=fingerprint"))
            } else {
                Err(bad(n, "a=fingerprint"))
            }
        })
        .collect::<Result<Vec<u8>, _>>()?;
    let hash = hash.to_ascii_lowercase();
    let expected = match hash.as_str() {
        "sha-1" => Some(20),
        "sha-224" => Some(28),
        "sha-256" => Some(32),
        "sha-384" => Some(48),
        "sha-512" => Some(64),
        _ => None,
    };
    if value.is_empty() || expected.is_some_and(|len| len != value.len()) {
        return Err(bad(n, "a=fingerprint"));
    }
    Ok(Fingerprint { hash, value })
}

fn parse_extmap(a: &str, n: usize) -> Result<Extmap, SdpError> {
    let mut it = a.split(' ').filter(|s| !s.is_empty());
    let id_dir = it.next().ok_or(bad(n, "a=extmap"))?;
    let (id, direction) = match id_dir.split_once('/') {
        Some((id, d)) => (id, Some(Direction::parse(d).ok_or(bad(n, "a=extmap"))?)),
        None => (id_dir, None),
    };
    let id: u8 = id.parse().map_err(|_| bad(n, "a=extmap id"))?;
    if id == 0 || id == 15 {
        return Err(bad(n, "a=extmap id"));
    }
    let uri = it.next().ok_or(bad(n, "a=extmap"))?.to_owned();
    let rest: Vec<&str> = it.collect();
    Ok(Extmap {
        id,
        direction,
        uri,
        attributes: (!rest.is_empty()).then(|| rest.join(" ")),
    })
}

fn parse_rtpmap(a: &str, n: usize) -> Result<RtpMap, SdpError> {
    let (pt, rest) = a.split_once(' ').ok_or(bad(n, "a=rtpmap"))?;
    let payload_type = parse_pt(pt, n, "a=rtpmap")?;
    let mut it = rest.trim().split('/');
    let encoding = it
        .next()
        .filter(|e| !e.is_empty())
        .ok_or(bad(n, "a=rtpmap"))?;
    let clock_rate = it
        .next()
        .and_then(|c| c.parse::<u32>().ok())
        .filter(|c| *c > 0)
        .ok_or(bad(n, "a=rtpmap clock rate"))?;
    let channels = match it.next() {
        Some(c) => Some(c.parse::<u16>().map_err(|_| bad(n, "a=rtpmap channels"))?),
        None => None,
    };
    if it.next().is_some() {
        return Err(bad(n, "a=rtpmap"));
    }
    Ok(RtpMap {
        payload_type,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

fn parse_rtcp_fb(a: &str, n: usize) -> Result<RtcpFb, SdpError> {
    let mut it = a.split(' ').filter(|s| !s.is_empty());
    let pt = it.next().ok_or(bad(n, "a=rtcp-fb"))?;
    let payload_type = if pt == "*" {
        None
    } else {
        Some(parse_pt(pt, n, "a=rtcp-fb")?)
    };
    let kind = it.next().ok_or(bad(n, "a=rtcp-fb"))?.to_owned();
    let rest: Vec<&str> = it.collect();
    Ok(RtcpFb {
        payload_type,
        kind,
        param: (!rest.is_empty()).then(|| rest.join(" ")),
    })
}

fn parse_ssrc(a: &str, n: usize) -> Result<SsrcAttr, SdpError> {
    let (ssrc, rest) = match a.split_once(' ') {
        Some((s, r)) => (s, r),
        None => (a, ""),
    };
    let ssrc = ssrc.parse::<u32>().map_err(|_| bad(n, "a=ssrc"))?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Err(bad(n, "a=ssrc"));
    }
    let (attribute, value) = match rest.split_once(':') {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (rest.to_owned(), None),
    };
    Ok(SsrcAttr {
        ssrc,
        attribute,
        value,
    })
}

/// rid-syntax = 1*(alpha-numeric / "-" / "_") (RFC 8851).
pub fn valid_rid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn parse_rid(a: &str, n: usize) -> Result<Rid, SdpError> {
    let mut it = a.split(' ').filter(|s| !s.is_empty());
    let id = it
        .next()
        .filter(|i| valid_rid(i))
        .ok_or(bad(n, "a=rid id"))?;
    let direction = match it.next() {
        Some("send") => RidDirection::Send,
        Some("recv") => RidDirection::Recv,
        _ => return Err(bad(n, "a=rid direction")),
    };
    let mut payload_types = Vec::new();
    let mut restrictions = Vec::new();
    if let Some(params) = it.next() {
        for item in params.split(';').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            if k == "pt" {
                for pt in v.split(',') {
                    payload_types.push(parse_pt(pt, n, "a=rid pt")?);
                }
            } else {
                restrictions.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    if it.next().is_some() {
        return Err(bad(n, "a=rid"));
    }
    Ok(Rid {
        id: id.to_owned(),
        direction,
        payload_types,
        restrictions,
    })
}

fn parse_simulcast_list(list: &str, n: usize) -> Result<Vec<Vec<SimulcastRid>>, SdpError> {
    // Firefox before RFC 8853 wrote `send rid=h;m;l` (draft syntax): read it too.
    let list = list.strip_prefix("rid=").unwrap_or(list);
    list.split(';')
        .map(|stream| {
            stream
                .split(',')
                .map(|alt| {
                    let (paused, rid) = match alt.strip_prefix('~') {
                        Some(r) => (true, r),
                        None => (false, alt),
                    };
                    if !valid_rid(rid) {
                        return Err(bad(n, "a=simulcast rid"));
                    }
                    Ok(SimulcastRid {
                        rid: rid.to_owned(),
                        paused,
                    })
                })
                .collect()
        })
        .collect()
}

fn parse_simulcast(a: &str, n: usize) -> Result<Simulcast, SdpError> {
    let mut out = Simulcast::default();
    let mut it = a.split(' ').filter(|s| !s.is_empty());
    let mut seen_any = false;
    while let Some(dir) = it.next() {
        let list = it.next().ok_or(bad(n, "a=simulcast"))?;
        let target = match dir {
            "send" if out.send.is_empty() => &mut out.send,
            "recv" if out.recv.is_empty() => &mut out.recv,
            _ => return Err(bad(n, "a=simulcast direction")),
        };
        *target = parse_simulcast_list(list, n)?;
        seen_any = true;
    }
    if !seen_any {
        return Err(bad(n, "a=simulcast"));
    }
    Ok(out)
}

fn parse_candidate(a: &str, n: usize) -> Result<Candidate, SdpError> {
    let w: Vec<&str> = a.split(' ').filter(|s| !s.is_empty()).collect();
    if w.len() < 8 || w[6] != "typ" || !w.len().is_multiple_of(2) {
        return Err(bad(n, "a=candidate"));
    }
    let mut c = Candidate {
        foundation: w[0].to_owned(),
        component: w[1].parse().map_err(|_| bad(n, "a=candidate component"))?,
        transport: w[2].to_ascii_lowercase(),
        priority: w[3].parse().map_err(|_| bad(n, "a=candidate priority"))?,
        address: w[4].to_owned(),
        port: w[5].parse().map_err(|_| bad(n, "a=candidate port"))?,
        typ: w[7].to_owned(),
        related_address: None,
        related_port: None,
        tcp_type: None,
        extensions: Vec::new(),
    };
    for pair in w[8..].chunks_exact(2) {
        match pair[0] {
            "raddr" => c.related_address = Some(pair[1].to_owned()),
            "rport" => {
                c.related_port = Some(pair[1].parse().map_err(|_| bad(n, "a=candidate rport"))?);
            }
            "tcptype" => c.tcp_type = Some(pair[1].to_owned()),
            k => c.extensions.push((k.to_owned(), pair[1].to_owned())),
        }
    }
    Ok(c)
}

/// Parses the value of a trickled candidate as signaling carries it
/// (`candidate:1 1 udp ...`, with or without the `a=` prefix).
pub fn parse_candidate_line(s: &str) -> Result<Candidate, SdpError> {
    let s = s.strip_prefix("a=").unwrap_or(s);
    let v = s.strip_prefix("candidate:").ok_or(bad(1, "a=candidate"))?;
    parse_candidate(v, 1)
}
