//! The DERP map nodes receive: the embedded relay as one region (999 by
//! default, like Headscale's), plus regions from optional DERP map files.

use std::collections::BTreeMap;
use std::path::Path;

use meshscale_wire::tailcfg::{DerpMap, DerpNode, DerpRegion};

use crate::config::{Config, ConfigError};

/// Files larger than this are not DERP maps.
const MAX_DERP_MAP_BYTES: u64 = 4 * 1024 * 1024;

/// Host and port clients use to reach this server, from `server_url`.
pub fn server_host_port(server_url: &str) -> (String, u16, bool) {
    let https = server_url.starts_with("https://");
    let rest = server_url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap_or_default();
    let default_port = if https { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').unwrap_or((v6, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_string(), port, https);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(default_port), https),
        None => (authority.to_string(), default_port, https),
    }
}

pub fn build(config: &Config) -> Result<DerpMap, ConfigError> {
    let mut regions: BTreeMap<i64, DerpRegion> = BTreeMap::new();
    for path in &config.derp.paths {
        let extra = load_file(Path::new(path))?;
        regions.extend(extra.regions.unwrap_or_default());
    }
    let d = &config.derp.server;
    if d.enabled {
        let (host, port, _) = server_host_port(&config.server_url);
        let stun_port = d
            .stun_listen_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| i64::from(a.port()))
            .map_err(|_| ConfigError::Key {
                key: "derp.server.stun_listen_addr".into(),
                problem: "not an address".into(),
            })?;
        let region_id = i64::from(d.region_id);
        // The embedded region wins over a file's region with the same id, as in Headscale.
        regions.insert(
            region_id,
            DerpRegion {
                region_id,
                region_code: d.region_code.clone(),
                region_name: d.region_name.clone(),
                nodes: vec![DerpNode {
                    name: region_id.to_string(),
                    region_id,
                    host_name: host,
                    ipv4: d.ipv4.clone(),
                    ipv6: d.ipv6.clone(),
                    stun_port,
                    derp_port: i64::from(port),
                    ..DerpNode::default()
                }],
                ..DerpRegion::default()
            },
        );
    }
    Ok(DerpMap {
        regions: Some(regions),
        ..DerpMap::default()
    })
}

fn load_file(path: &Path) -> Result<DerpMap, ConfigError> {
    let key = || "derp.paths".to_string();
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::Key {
        key: key(),
        problem: format!("{}: {e}", path.display()),
    })?;
    if meta.len() > MAX_DERP_MAP_BYTES {
        return Err(ConfigError::Key {
            key: key(),
            problem: format!("{} is too large", path.display()),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Key {
        key: key(),
        problem: format!("{}: {e}", path.display()),
    })?;
    // YAML is a superset of JSON: Headscale's DERP map files come in either.
    let value: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Key {
        key: key(),
        problem: format!("{}: {e}", path.display()),
    })?;
    let json = serde_json::to_value(value).map_err(|e| ConfigError::Key {
        key: key(),
        problem: format!("{}: {e}", path.display()),
    })?;
    serde_json::from_value(json).map_err(|e| ConfigError::Key {
        key: key(),
        problem: format!("{}: not a DERP map: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_from_server_url() {
        assert_eq!(
            server_host_port("https://mesh.example.com"),
            ("mesh.example.com".into(), 443, true)
        );
        assert_eq!(
            server_host_port("http://10.0.0.1:8080/"),
            ("10.0.0.1".into(), 8080, false)
        );
        assert_eq!(
            server_host_port("https://[fd00::1]:8443"),
            ("fd00::1".into(), 8443, true)
        );
    }

    #[test]
    fn embedded_region_is_announced() {
        let mut c = Config {
            server_url: "https://10.0.0.1:8443".into(),
            ..Config::default()
        };
        c.derp.server.stun_listen_addr = "0.0.0.0:3479".into();
        let m = build(&c).unwrap();
        let r = &m.regions.as_ref().unwrap()[&999];
        assert_eq!(r.region_code, "meshscale");
        assert_eq!(
            (
                r.nodes[0].host_name.as_str(),
                r.nodes[0].derp_port,
                r.nodes[0].stun_port
            ),
            ("10.0.0.1", 8443, 3479)
        );
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""Regions":{"999":"#), "{json}");
    }

    #[test]
    fn extra_regions_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("derp.json");
        std::fs::write(&f, r#"{"Regions":{"900":{"RegionID":900,"RegionCode":"x","RegionName":"X","Nodes":[{"Name":"900a","RegionID":900,"HostName":"derp.example"}]}}}"#).unwrap();
        let mut c = Config::default();
        c.derp.paths.push(f.display().to_string());
        let m = build(&c).unwrap();
        assert_eq!(m.regions.unwrap().len(), 2);
        std::fs::write(&f, "nope: [").unwrap();
        assert!(build(&c).is_err());
    }
}
