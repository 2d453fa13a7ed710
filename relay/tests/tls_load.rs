//! Loading the TLS certificate and key: errors name the file at fault and say what is
//! wrong; a good pair loads and offers TLS 1.3 and 1.2.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use relay::tls::{TlsError, TlsReloader, load_server_config};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("relay-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn pair(d: &Dir, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = d.0.join(format!("{name}.crt"));
    let key = d.0.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn good_pair_loads_with_tls12_and_tls13() {
    let d = dir("good");
    let (cert, key) = pair(&d, "a");
    let cfg = load_server_config(&cert, &key).expect("loads");
    // Both versions are enabled: a server connection can be made and the config is not
    // restricted to one version (checked through a handshake in dataplane_turn).
    assert!(rustls::ServerConnection::new(cfg).is_ok());
    let r = TlsReloader::load(&cert, &key).unwrap();
    assert_eq!(r.cert_path(), cert.as_path());
    r.reload().expect("reload of the same pair");
}

#[test]
fn missing_files_are_named() {
    let d = dir("missing");
    let (cert, key) = pair(&d, "a");
    let nope = d.0.join("nope.pem");
    let e = load_server_config(&nope, &key).unwrap_err();
    assert!(
        matches!(
            e,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&nope.display().to_string()), "{e}");
    let e = load_server_config(&cert, &nope).unwrap_err();
    assert!(
        matches!(
            e,
            TlsError::Read {
                what: "private key",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&nope.display().to_string()), "{e}");
}

#[test]
fn wrong_contents_are_explained() {
    let d = dir("wrong");
    let (cert, key) = pair(&d, "a");
    let (_, other_key) = pair(&d, "b");
    // Key where the certificate should be, and vice versa.
    let e = load_server_config(&key, &key).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    let e = load_server_config(&cert, &cert).unwrap_err();
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
    // A key that does not belong to the certificate.
    let e = load_server_config(&cert, &other_key).unwrap_err();
    assert!(matches!(e, TlsError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("does the key belong"), "{e}");
}

#[test]
fn failed_reload_keeps_the_current_config() {
    let d = dir("reload");
    let (cert, key) = pair(&d, "a");
    let r = TlsReloader::load(&cert, &key).unwrap();
    let before = r.current();
    std::fs::write(&key, "garbage").unwrap();
    let e = r.reload().unwrap_err();
    assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    assert!(
        std::sync::Arc::ptr_eq(&before, &r.current()),
        "old config kept"
    );
}
