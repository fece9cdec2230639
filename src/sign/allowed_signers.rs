//! `allowed_signers` files as OpenSSH reads them: principals with patterns,
//! `namespaces=`, `valid-after=` / `valid-before=`, `cert-authority`.

use super::*;

/// Splits at whitespace outside double quotes.
pub(super) fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// OpenSSH's `*`/`?` wildcard match.
pub(super) fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

/// A comma-separated pattern list with `!` negation (OpenSSH `match_pattern_list`).
pub(super) fn pattern_list(list: &str, s: &str) -> bool {
    let mut matched = false;
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), s.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), s.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// Splits options at commas outside quotes.
pub(super) fn options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]`: UTC with `Z`, else local time.
pub(super) fn signer_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    let (digits, utc) = match s.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (s, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits.get(r).and_then(|x| x.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, n(6..8)?)?;
    let naive: NaiveDateTime = match digits.len() {
        8 => date.and_hms_opt(0, 0, 0)?,
        12 => date.and_hms_opt(n(8..10)?, n(10..12)?, 0)?,
        14 => date.and_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)?,
        _ => return None,
    };
    if utc {
        Some(chrono::Utc.from_utc_datetime(&naive))
    } else {
        chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// Why the signing key is not allowed for the identity, line by line of the
/// allowed_signers file (no line: the key is not in it at all).
#[derive(Debug, thiserror::Error)]
pub(super) enum SignerError {
    #[error("the signing key {fingerprint} is not in the allowed_signers file")]
    NotListed { fingerprint: String },
    #[error(
        "the signing key {fingerprint} is not allowed: {}",
        refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    NotAllowed {
        fingerprint: String,
        refusals: Vec<Refusal>,
    },
}

/// One allowed_signers line that does not allow the key, and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {why}")]
pub(super) struct Refusal {
    line: usize,
    why: Refused,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error("cannot parse the key")]
    Unparsable,
    #[error("the key is listed for `{listed}`, not `{identity}`")]
    OtherIdentity { listed: String, identity: String },
    #[error("the key is limited to namespaces {namespaces}")]
    Namespaces { namespaces: String },
    #[error("bad time `{value}`")]
    BadTime { value: String },
    /// `valid-after`/`valid-before` excludes now; `option` as written.
    #[error("the key is not valid now ({option})")]
    NotValidNow { option: String },
    /// CA-signed certificates are not what opsrun writes; such a line allows nothing here.
    #[error("unsupported option `{name}`")]
    Unsupported { name: String },
}

/// Finds a line allowing `key` for `identity` in our namespace, now. Returns its line number.
pub(super) fn allowed_signer(
    file: &str,
    identity: &str,
    key: &PublicKey,
) -> Result<usize, SignerError> {
    let now = chrono::Utc::now();
    let mut reasons = Vec::new();
    let refuse = |line: usize, why: Refused| Refusal { line, why };
    for (i, raw) in file.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let toks = tokens(line);
        let Some(principals) = toks.first() else {
            continue;
        };
        let rest = |from: usize| toks.get(from..).map(|t| t.join(" ")).unwrap_or_default();
        let (opts, k) = match PublicKey::from_openssh(&rest(1)) {
            Ok(k) => (String::new(), k),
            Err(_) => match PublicKey::from_openssh(&rest(2)) {
                Ok(k) => (toks[1].clone(), k),
                Err(_) => {
                    reasons.push(refuse(i + 1, Refused::Unparsable));
                    continue;
                }
            },
        };
        if k.key_data() != key.key_data() {
            continue;
        }
        if !pattern_list(unquote(principals), identity) {
            reasons.push(refuse(
                i + 1,
                Refused::OtherIdentity {
                    listed: unquote(principals).to_string(),
                    identity: identity.to_string(),
                },
            ));
            continue;
        }
        let mut ok = true;
        for o in options(&opts).iter().filter(|o| !o.is_empty()) {
            let (name, value) = o.split_once('=').unwrap_or((o.as_str(), ""));
            let value = unquote(value);
            match name.to_ascii_lowercase().as_str() {
                "namespaces" if !pattern_list(value, NAMESPACE) => {
                    reasons.push(refuse(
                        i + 1,
                        Refused::Namespaces {
                            namespaces: value.to_string(),
                        },
                    ));
                    ok = false;
                }
                "namespaces" => {}
                "valid-after" | "valid-before" => {
                    let Some(t) = signer_time(value) else {
                        reasons.push(refuse(
                            i + 1,
                            Refused::BadTime {
                                value: value.to_string(),
                            },
                        ));
                        ok = false;
                        continue;
                    };
                    let expired = if name.eq_ignore_ascii_case("valid-after") {
                        now < t
                    } else {
                        now > t
                    };
                    if expired {
                        reasons.push(refuse(i + 1, Refused::NotValidNow { option: o.clone() }));
                        ok = false;
                    }
                }
                _ => {
                    reasons.push(refuse(
                        i + 1,
                        Refused::Unsupported {
                            name: name.to_string(),
                        },
                    ));
                    ok = false;
                }
            }
        }
        if ok {
            return Ok(i + 1);
        }
    }
    let fingerprint = fingerprint_of(key);
    Err(if reasons.is_empty() {
        SignerError::NotListed { fingerprint }
    } else {
        SignerError::NotAllowed {
            fingerprint,
            refusals: reasons,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::signature::stated;
    use crate::sign::verify::contained;

    #[test]
    fn patterns_follow_openssh() {
        assert!(pattern_list("alice,bob", "bob"));
        assert!(pattern_list("*@example.org", "a@example.org"));
        assert!(!pattern_list("*,!mallory", "mallory"));
        assert!(pattern_list("opsrun-*", NAMESPACE));
        assert!(!pattern_list("git", NAMESPACE));
    }

    #[test]
    fn reads_stated_lines_outside_fences() {
        let text = "\
- Signer: `alice`
- Key: `SHA256:abc` (ED25519)
- Signed at: 2026-01-02 03:04:05 +00:00

stdout (3 bytes; full output `outputs/1-a.stdout` sha256 `00ff`):

````text
stdout (3 bytes; full output `outputs/evil` sha256 `11`):
```
- Signer: `mallory`
````
";
        let s = stated(text);
        assert_eq!(s.identity.as_deref(), Some("alice"));
        assert_eq!(s.fingerprint.as_deref(), Some("SHA256:abc"));
        assert_eq!(s.signed_at.as_deref(), Some("2026-01-02 03:04:05 +00:00"));
        assert_eq!(
            s.outputs,
            vec![("outputs/1-a.stdout".to_string(), "00ff".to_string())]
        );
    }

    #[test]
    fn output_paths_stay_inside() {
        assert!(contained("outputs/a.stdout"));
        assert!(!contained("../x"));
        assert!(!contained("/etc/passwd"));
        assert!(!contained("outputs/../../x"));
    }

    #[test]
    fn allowed_signers_options_are_honoured() {
        const KEY: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFL3MmrAMJu1xDhGwgbQTndO2tBrk89q6zMWic3rOvA4";
        let key = PublicKey::from_openssh(KEY).unwrap();
        let ok = |file: &str, id: &str| allowed_signer(file, id, &key);
        let refused = |file: &str, id: &str| ok(file, id).unwrap_err().to_string();
        let fp = fingerprint_of(&key);
        assert_eq!(
            ok(&format!("# comment\n\nalice {KEY} c"), "alice").ok(),
            Some(3)
        );
        assert_eq!(
            refused(
                &format!("bob,carol {KEY}\nalice cert-authority {KEY}"),
                "alice"
            ),
            format!(
                "the signing key {fp} is not allowed: line 1: the key is listed for `bob,carol`, \
                 not `alice`; line 2: unsupported option `cert-authority`"
            )
        );
        assert_eq!(
            refused("", "alice"),
            format!("the signing key {fp} is not in the allowed_signers file")
        );
        assert!(ok(&format!("*@ops.example {KEY}"), "alice@ops.example").is_ok());
        assert!(ok(&format!("alice namespaces=\"git,opsrun-*\" {KEY}"), "alice").is_ok());
        assert!(ok(&format!("alice namespaces=\"git\" {KEY}"), "alice").is_err());
        assert!(ok(&format!("alice valid-before=\"20000101\" {KEY}"), "alice").is_err());
        assert!(ok(&format!("alice valid-after=\"20000101Z\" {KEY}"), "alice").is_ok());
        assert!(ok(&format!("alice cert-authority {KEY}"), "alice").is_err());
        assert!(ok(&format!("\"alice smith\" {KEY}"), "alice smith").is_ok());
    }

    #[test]
    fn signer_times() {
        assert!(signer_time("20260102Z").is_some());
        assert!(signer_time("202601020304Z").is_some());
        assert!(signer_time("20260102030405").is_some());
        assert!(signer_time("2026").is_none());
    }
}
