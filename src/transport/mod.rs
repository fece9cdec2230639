//! How commands reach a host: SSH (one native-mux master per host) or a local subprocess.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach one inventory host (built by the planner from the inventory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub host: String,
    pub kind: ConnectionKind,
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub jump: Vec<String>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Ssh,
    Local,
}
