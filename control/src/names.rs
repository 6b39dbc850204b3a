//! Names that end up in DNS: user names, node given names, the MagicDNS base domain.

/// Checks one DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
/// Lower case only, so that two names never differ by case alone.
pub(crate) fn validate_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let why = if c.is_ascii_uppercase() {
            "must be lower case".to_string()
        } else {
            format!("contains {c:?}")
        };
        return Err(format!(
            "{name:?} is not a valid DNS label: {why} (allowed: a-z, 0-9, '-')"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{name:?} is not a valid DNS label: must not start or end with '-'"
        ));
    }
    Ok(())
}

/// Checks a dotted domain name made of valid labels, at most 253 characters.
pub(crate) fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        validate_dns_label(label).map_err(|e| format!("{name:?}: {e}"))?;
    }
    Ok(())
}

/// Turns a client-reported hostname into a DNS label, as Tailscale's
/// `dnsname.SanitizeHostname` does: drop a `.local`-style suffix, lower-case,
/// separators become `-`, other invalid characters are dropped, trimmed to 63.
pub(crate) fn sanitize_hostname(hostname: &str) -> String {
    let mut h = hostname.trim().to_ascii_lowercase();
    for suffix in [".local", ".localdomain", ".lan"] {
        if let Some(stripped) = h.strip_suffix(suffix) {
            h = stripped.to_string();
            break;
        }
    }
    let mut out = String::with_capacity(h.len().min(63));
    for c in h.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            ' ' | '.' | '@' | '_' | '-' if !out.is_empty() && !out.ends_with('-') => out.push('-'),
            _ => {}
        }
        if out.len() >= 63 {
            break;
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "node".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The n-th candidate for a given name when `base` is taken: `base`, `base-1`, `base-2`, ...
/// Shortens `base` so the suffixed name still fits in one label.
pub(crate) fn given_name_candidate(base: &str, n: u32) -> String {
    if n == 0 {
        return base.to_string();
    }
    let suffix = format!("-{n}");
    let keep = 63usize.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", base[..keep].trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_dns_label("vpn1").is_ok());
        assert!(validate_dns_label("a-b").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "Vpn",
            "a_b",
            "a.b",
            "héllo",
            &"a".repeat(64),
        ] {
            assert!(validate_dns_label(bad).is_err(), "{bad:?}");
        }
        assert!(
            validate_dns_label("Vpn")
                .unwrap_err()
                .contains("lower case")
        );
    }

    #[test]
    fn domains() {
        assert!(validate_dns_name("mesh.internal").is_ok());
        assert!(validate_dns_name("mesh..internal").is_err());
    }

    #[test]
    fn hostnames_become_labels() {
        assert_eq!(sanitize_hostname("My Laptop.local"), "my-laptop");
        assert_eq!(
            sanitize_hostname("web-7d9f.default.svc"),
            "web-7d9f-default-svc"
        );
        assert_eq!(sanitize_hostname("__"), "node");
        assert_eq!(sanitize_hostname("émile"), "mile");
        assert_eq!(sanitize_hostname(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn collision_candidates() {
        assert_eq!(given_name_candidate("web", 0), "web");
        assert_eq!(given_name_candidate("web", 2), "web-2");
        let long = "a".repeat(63);
        assert_eq!(given_name_candidate(&long, 12).len(), 63);
    }
}
