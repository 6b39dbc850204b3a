//! The YAML config file plus `MESHSCALE_*` overrides (`Config::from_sources`).
//! Input: the file text; if it contains a NUL, what follows is
//! `KEY=VALUE` lines used as the environment.
use meshscale_control::config::Config;
use std::path::Path;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env_text) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(cfg) = Config::from_sources(Some(Path::new("fuzz.yaml")), Some(file), &env) {
        // Derived values a valid config promises to produce.
        let _ = cfg.ip_prefixes();
        let _ = cfg.ephemeral_inactivity_timeout();
        let _ = cfg.socket_mode();
    }
}
