//! Writing session descriptions: CRLF lines in the order RFC 8866 requires and browsers
//! write them (session lines, then each `m=` section with its attributes).

use std::fmt::{self, Display, Formatter, Write as _};

use super::model::{
    Candidate, Extmap, Fingerprint, HexColons, MediaDescription, Rid, SessionDescription, Setup,
    Simulcast, SimulcastRid,
};

impl Display for SessionDescription {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(f, "v=0\r\n")?;
        write!(
            f,
            "o={} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.address
        )?;
        let name = if self.session_name.is_empty() {
            "-"
        } else {
            &self.session_name
        };
        write!(f, "s={name}\r\n")?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        // `b=` and `t=` lines we did not model are kept in `other`; write t= if absent.
        let has_t = self.other.iter().any(|l| l.starts_with("t="));
        for l in self.other.iter().filter(|l| !l.starts_with("a=")) {
            write!(f, "{l}\r\n")?;
        }
        if !has_t {
            write!(f, "t=0 0\r\n")?;
        }
        if self.ice_lite {
            write!(f, "a=ice-lite\r\n")?;
        }
        for g in &self.groups {
            write!(f, "a=group:{}", g.semantics)?;
            for mid in &g.mids {
                write!(f, " {mid}")?;
            }
            write!(f, "\r\n")?;
        }
        if self.extmap_allow_mixed {
            write!(f, "a=extmap-allow-mixed\r\n")?;
        }
        if let Some(s) = &self.msid_semantic {
            write!(f, "a=msid-semantic: {s}\r\n")?;
        }
        write_transport(
            f,
            self.ice_ufrag.as_deref(),
            self.ice_pwd.as_deref(),
            &self.ice_options,
            &self.fingerprints,
            self.setup,
        )?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for e in &self.extmaps {
            write_extmap(f, e)?;
        }
        for l in self.other.iter().filter(|l| l.starts_with("a=")) {
            write!(f, "{l}\r\n")?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

/// The transport attributes, written alike at session and media level.
fn write_transport(
    f: &mut Formatter<'_>,
    ice_ufrag: Option<&str>,
    ice_pwd: Option<&str>,
    ice_options: &[String],
    fingerprints: &[Fingerprint],
    setup: Option<Setup>,
) -> fmt::Result {
    if let Some(u) = ice_ufrag {
        write!(f, "a=ice-ufrag:{u}\r\n")?;
    }
    if let Some(p) = ice_pwd {
        write!(f, "a=ice-pwd:{p}\r\n")?;
    }
    if !ice_options.is_empty() {
        write!(f, "a=ice-options:{}\r\n", ice_options.join(" "))?;
    }
    for fp in fingerprints {
        write!(f, "a=fingerprint:{} {}\r\n", fp.hash, HexColons(&fp.value))?;
    }
    if let Some(s) = setup {
        write!(f, "a=setup:{}\r\n", s.as_str())?;
    }
    Ok(())
}

fn write_extmap(f: &mut Formatter<'_>, e: &Extmap) -> fmt::Result {
    write!(f, "a=extmap:{}", e.id)?;
    if let Some(d) = e.direction {
        write!(f, "/{}", d.as_str())?;
    }
    write!(f, " {}", e.uri)?;
    if let Some(a) = &e.attributes {
        write!(f, " {a}")?;
    }
    write!(f, "\r\n")
}

impl Display for MediaDescription {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "m={} {} {} {}\r\n",
            self.kind.as_str(),
            self.port,
            self.proto.as_str(),
            self.formats.join(" ")
        )?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for l in self.other.iter().filter(|l| !l.starts_with("a=")) {
            write!(f, "{l}\r\n")?;
        }
        for c in &self.candidates {
            write!(f, "a={c}\r\n")?;
        }
        if self.end_of_candidates {
            write!(f, "a=end-of-candidates\r\n")?;
        }
        write_transport(
            f,
            self.ice_ufrag.as_deref(),
            self.ice_pwd.as_deref(),
            &self.ice_options,
            &self.fingerprints,
            self.setup,
        )?;
        if let Some(mid) = &self.mid {
            write!(f, "a=mid:{mid}\r\n")?;
        }
        for e in &self.extmaps {
            write_extmap(f, e)?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        if let Some(m) = &self.msid {
            write!(f, "a=msid:{}", m.stream)?;
            if let Some(t) = &m.track {
                write!(f, " {t}")?;
            }
            write!(f, "\r\n")?;
        }
        if self.rtcp_mux {
            write!(f, "a=rtcp-mux\r\n")?;
        }
        if self.rtcp_rsize {
            write!(f, "a=rtcp-rsize\r\n")?;
        }
        for r in &self.rtpmaps {
            write!(
                f,
                "a=rtpmap:{} {}/{}",
                r.payload_type, r.encoding, r.clock_rate
            )?;
            if let Some(c) = r.channels {
                write!(f, "/{c}")?;
            }
            write!(f, "\r\n")?;
            for fb in self
                .rtcp_fbs
                .iter()
                .filter(|fb| fb.payload_type == Some(r.payload_type))
            {
                write!(f, "a=rtcp-fb:{} {}", r.payload_type, fb.kind)?;
                if let Some(p) = &fb.param {
                    write!(f, " {p}")?;
                }
                write!(f, "\r\n")?;
            }
            for fmtp in self
                .fmtps
                .iter()
                .filter(|x| x.payload_type == r.payload_type)
            {
                write!(f, "a=fmtp:{} {}\r\n", fmtp.payload_type, fmtp.params)?;
            }
        }
        // rtcp-fb and fmtp lines of payload types without an rtpmap (and `*`).
        for fb in self
            .rtcp_fbs
            .iter()
            .filter(|fb| fb.payload_type.is_none_or(|pt| self.rtpmap(pt).is_none()))
        {
            match fb.payload_type {
                Some(pt) => write!(f, "a=rtcp-fb:{pt} {}", fb.kind)?,
                None => write!(f, "a=rtcp-fb:* {}", fb.kind)?,
            }
            if let Some(p) = &fb.param {
                write!(f, " {p}")?;
            }
            write!(f, "\r\n")?;
        }
        for fmtp in self
            .fmtps
            .iter()
            .filter(|x| self.rtpmap(x.payload_type).is_none())
        {
            write!(f, "a=fmtp:{} {}\r\n", fmtp.payload_type, fmtp.params)?;
        }
        for g in &self.ssrc_groups {
            write!(f, "a=ssrc-group:{}", g.semantics)?;
            for s in &g.ssrcs {
                write!(f, " {s}")?;
            }
            write!(f, "\r\n")?;
        }
        for s in &self.ssrcs {
            write!(f, "a=ssrc:{} {}", s.ssrc, s.attribute)?;
            if let Some(v) = &s.value {
                write!(f, ":{v}")?;
            }
            write!(f, "\r\n")?;
        }
        for r in &self.rids {
            write!(f, "a={r}\r\n")?;
        }
        if let Some(s) = &self.simulcast {
            write!(f, "a={s}\r\n")?;
        }
        if let Some(p) = self.sctp_port {
            write!(f, "a=sctp-port:{p}\r\n")?;
        }
        if let Some(s) = self.max_message_size {
            write!(f, "a=max-message-size:{s}\r\n")?;
        }
        for l in self.other.iter().filter(|l| l.starts_with("a=")) {
            write!(f, "{l}\r\n")?;
        }
        Ok(())
    }
}

impl Display for Candidate {
    /// `candidate:...` without the `a=` prefix (the form trickle ICE carries).
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "candidate:{} {} {} {} {} {} typ {}",
            self.foundation,
            self.component,
            self.transport,
            self.priority,
            self.address,
            self.port,
            self.typ
        )?;
        if let Some(a) = &self.related_address {
            write!(f, " raddr {a}")?;
        }
        if let Some(p) = self.related_port {
            write!(f, " rport {p}")?;
        }
        if let Some(t) = &self.tcp_type {
            write!(f, " tcptype {t}")?;
        }
        for (k, v) in &self.extensions {
            write!(f, " {k} {v}")?;
        }
        Ok(())
    }
}

impl Display for Rid {
    /// `rid:...` without the `a=` prefix.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "rid:{} {}", self.id, self.direction.as_str())?;
        let mut params = String::new();
        if !self.payload_types.is_empty() {
            params.push_str("pt=");
            for (i, pt) in self.payload_types.iter().enumerate() {
                if i > 0 {
                    params.push(',');
                }
                let _ = write!(params, "{pt}");
            }
        }
        for (k, v) in &self.restrictions {
            if !params.is_empty() {
                params.push(';');
            }
            params.push_str(k);
            if !v.is_empty() {
                params.push('=');
                params.push_str(v);
            }
        }
        if !params.is_empty() {
            write!(f, " {params}")?;
        }
        Ok(())
    }
}

fn write_sim_list(f: &mut Formatter<'_>, list: &[Vec<SimulcastRid>]) -> fmt::Result {
    for (i, stream) in list.iter().enumerate() {
        if i > 0 {
            f.write_str(";")?;
        }
        for (j, alt) in stream.iter().enumerate() {
            if j > 0 {
                f.write_str(",")?;
            }
            if alt.paused {
                f.write_str("~")?;
            }
            f.write_str(&alt.rid)?;
        }
    }
    Ok(())
}

impl Display for Simulcast {
    /// `simulcast:...` without the `a=` prefix.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("simulcast:")?;
        let mut first = true;
        if !self.send.is_empty() {
            f.write_str("send ")?;
            write_sim_list(f, &self.send)?;
            first = false;
        }
        if !self.recv.is_empty() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str("recv ")?;
            write_sim_list(f, &self.recv)?;
        }
        Ok(())
    }
}
