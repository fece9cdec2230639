//! The inventory: hosts, groups, connection settings and variables of one environment.

use crate::diagnostic::{SourceFile, Span};
use crate::duration;
use crate::load::decode::check_identifier;
use crate::shell::Become;
use crate::transport::ConnectionKind;
use crate::yaml::{self, Error, Fields, Node, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfirmMode {
    #[default]
    None,
    Yes,
    Typed,
}

/// Connection settings; every field optional so host entries can override the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub jump: Vec<String>,
    pub become_with: Option<Become>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

impl SshSettings {
    /// `self` with the fields `over` sets replaced.
    pub fn overridden_by(&self, over: &SshSettings) -> SshSettings {
        SshSettings {
            user: over.user.clone().or_else(|| self.user.clone()),
            port: over.port.or(self.port),
            jump: if over.jump.is_empty() {
                self.jump.clone()
            } else {
                over.jump.clone()
            },
            become_with: over.become_with.or(self.become_with),
            identity_file: over
                .identity_file
                .clone()
                .or_else(|| self.identity_file.clone()),
            known_hosts_file: over
                .known_hosts_file
                .clone()
                .or_else(|| self.known_hosts_file.clone()),
            config_file: over
                .config_file
                .clone()
                .or_else(|| self.config_file.clone()),
            connect_timeout: over.connect_timeout.or(self.connect_timeout),
        }
    }
}

pub type Vars = Vec<(String, Node)>;

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub connection: ConnectionKind,
    /// Effective settings: inventory-wide `ssh:` overridden by the host's own.
    pub ssh: SshSettings,
    pub vars: Vars,
    /// Groups in inventory order.
    pub groups: Vec<String>,
    /// Where the host was (first) defined.
    pub span: Span,
}

impl Host {
    /// How the transport reaches this host: its address and effective `ssh:` settings.
    pub fn endpoint(&self) -> crate::transport::Endpoint {
        crate::transport::Endpoint {
            host: self.name.clone(),
            kind: self.connection,
            address: self.address.clone(),
            user: self.ssh.user.clone(),
            port: self.ssh.port,
            jump: self.ssh.jump.clone(),
            identity_file: self.ssh.identity_file.clone(),
            known_hosts_file: self.ssh.known_hosts_file.clone(),
            config_file: self.ssh.config_file.clone(),
            connect_timeout: self.ssh.connect_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub vars: Vars,
    pub hosts: Vec<String>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub name: String,
    pub confirm: ConfirmMode,
    pub vars: Vars,
    pub groups: Vec<Group>,
    pub hosts: Vec<Host>,
    pub source: Arc<SourceFile>,
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

pub const SSH_FIELDS: &[&str] = &[
    "user",
    "port",
    "jump",
    "become",
    "identity_file",
    "known_hosts_file",
    "config_file",
    "connect_timeout",
];

/// Group and host names appear in host patterns, so pattern syntax is kept out of them.
fn check_name(node: &Node, name: &str, what: &str) -> yaml::Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            node.span,
            format!("invalid {what} name `{name}`: expected letters, digits, `-`, `_` or `.`"),
        ))
    }
}

pub fn decode(root: &Node, source: Arc<SourceFile>) -> yaml::Result<Inventory> {
    if root.is_null() {
        return Err(Error::new(
            root.span,
            "the inventory is empty: expected a mapping with `groups`",
        ));
    }
    let f = root.fields(
        "the inventory",
        &["name", "confirm", "ssh", "vars", "groups"],
    )?;
    let stem = source
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = f.opt_string("name")?.unwrap_or(stem);
    let confirm = match f.get("confirm") {
        None => ConfirmMode::None,
        Some(n) => match n.string("one of none, yes, typed")?.as_str() {
            "none" => ConfirmMode::None,
            "yes" => ConfirmMode::Yes,
            "typed" => ConfirmMode::Typed,
            other => {
                return Err(Error::new(
                    n.span,
                    format!(
                        "invalid `confirm` value `{other}`{}",
                        crate::diagnostic::did_you_mean(other, ["none", "yes", "typed"])
                    ),
                )
                .help("expected one of: none, yes, typed"))
            }
        },
    };
    let base_dir = source.dir().to_path_buf();
    let defaults = match f.get("ssh") {
        Some(n) if !n.is_null() => decode_ssh(n, &base_dir)?,
        _ => SshSettings::default(),
    };
    let vars = decode_vars(f.get("vars"))?;

    let groups_node = f.require("groups")?;
    let mut groups = Vec::new();
    let mut hosts: Vec<Host> = Vec::new();
    // The first explicit definition of each host, to compare later ones against.
    let mut defs: Vec<(String, Option<HostDef>, String)> = Vec::new();
    for ((gname, gkey), gnode) in groups_node.entries("a mapping of group names to groups")? {
        check_name(gkey, &gname, "group")?;
        let gf = gnode.fields(&format!("group `{gname}`"), &["vars", "hosts"])?;
        let gvars = decode_vars(gf.get("vars"))?;
        let mut members = Vec::new();
        if let Some(hn) = gf.get("hosts").filter(|n| !n.is_null()) {
            for ((hname, hkey), hnode) in
                hn.entries(&format!("a mapping of host names in group `{gname}`"))?
            {
                check_name(hkey, &hname, "host")?;
                let def = if hnode.is_null() {
                    None
                } else {
                    Some(decode_host_def(hnode, &hname, &base_dir)?)
                };
                match defs.iter_mut().find(|(n, _, _)| *n == hname) {
                    Some((_, existing, first_group)) => match (existing.as_ref(), def) {
                        (Some(a), Some(b)) if a.value != b.value => {
                            return Err(Error::new(
                                hkey.span,
                                format!(
                                    "host `{hname}` is defined differently in groups `{first_group}` and `{gname}`"
                                ),
                            )
                            .help(format!(
                                "define it once (line {}) and list it as `{hname}: {{}}` or `{hname}:` in other groups",
                                a.span.start.line
                            )))
                        }
                        (None, Some(b)) => *existing = Some(b),
                        _ => {}
                    },
                    None => defs.push((hname.clone(), def, gname.clone())),
                }
                if !members.contains(&hname) {
                    members.push(hname);
                }
            }
        }
        groups.push(Group {
            name: gname,
            vars: gvars,
            hosts: members,
            span: gkey.span,
        });
    }
    for (hname, def, _) in defs {
        let def = def.unwrap_or_default();
        hosts.push(Host {
            address: def.value.address.clone().unwrap_or_else(|| hname.clone()),
            connection: def.value.connection.unwrap_or(ConnectionKind::Ssh),
            ssh: defaults.overridden_by(&def.value.ssh),
            vars: def.vars,
            groups: groups
                .iter()
                .filter(|g| g.hosts.contains(&hname))
                .map(|g| g.name.clone())
                .collect(),
            span: def.span,
            name: hname,
        });
    }
    for g in &groups {
        if let Some(h) = hosts.iter().find(|h| h.name == g.name) {
            let host_group = h.groups.first().cloned().unwrap_or_default();
            return Err(Error::new(
                g.span,
                format!(
                    "`{}` is both a group and a host name: host patterns would be ambiguous",
                    g.name
                ),
            )
            .help(format!(
                "rename the group or the host `{}` listed in group `{host_group}`",
                h.name
            )));
        }
    }
    Ok(Inventory {
        name,
        confirm,
        vars,
        groups,
        hosts,
        source,
    })
}

#[derive(Debug, Clone, Default, PartialEq)]
struct HostFields {
    address: Option<String>,
    connection: Option<ConnectionKind>,
    ssh: SshSettings,
    vars_text: Vec<(String, serde_json::Value)>,
}

#[derive(Debug, Clone, Default)]
struct HostDef {
    value: HostFields,
    vars: Vars,
    span: Span,
}

fn decode_host_def(n: &Node, name: &str, base: &std::path::Path) -> yaml::Result<HostDef> {
    let f = n.fields(
        &format!("host `{name}`"),
        &["address", "port", "user", "connection", "vars", "ssh"],
    )?;
    let mut ssh = match f.get("ssh") {
        Some(s) if !s.is_null() => decode_ssh(s, base)?,
        _ => SshSettings::default(),
    };
    if let Some(p) = f.get("port") {
        ssh.port = Some(port(p)?);
    }
    if let Some(u) = f.opt_string("user")? {
        ssh.user = Some(u);
    }
    let connection = match f.get("connection") {
        None => None,
        Some(c) => Some(match c.string("`ssh` or `local`")?.as_str() {
            "ssh" => ConnectionKind::Ssh,
            "local" => ConnectionKind::Local,
            other => {
                return Err(Error::new(
                    c.span,
                    format!(
                        "invalid `connection` `{other}`{}",
                        crate::diagnostic::did_you_mean(other, ["ssh", "local"])
                    ),
                )
                .help("expected `ssh` or `local`"))
            }
        }),
    };
    let vars = decode_vars(f.get("vars"))?;
    Ok(HostDef {
        value: HostFields {
            address: f.opt_string("address")?,
            connection,
            ssh,
            vars_text: vars.iter().map(|(k, v)| (k.clone(), v.to_json())).collect(),
        },
        vars,
        span: n.span,
    })
}

fn port(n: &Node) -> yaml::Result<u16> {
    match &n.value {
        Value::Int(i) if (1..=65535).contains(i) => Ok(*i as u16),
        Value::Int(i) => Err(Error::new(
            n.span,
            format!("invalid port {i}: expected a number from 1 to 65535"),
        )),
        Value::Str(s) if s.trim().parse::<u16>().is_ok_and(|p| p > 0) => Err(Error::new(
            n.span,
            "expected a port number from 1 to 65535, found a string",
        )
        .help(format!("write it without quotes: `port: {}`", s.trim()))),
        _ => Err(Error::new(
            n.span,
            format!("expected a port number from 1 to 65535, found {}", n.kind()),
        )),
    }
}

fn decode_ssh(n: &Node, base: &std::path::Path) -> yaml::Result<SshSettings> {
    let f: Fields = n.fields("`ssh`", SSH_FIELDS)?;
    let path = |name: &str| -> yaml::Result<Option<PathBuf>> {
        Ok(f.opt_string(name)?.map(|s| resolve_path(&s, base)))
    };
    let jump = match f.get("jump") {
        None => Vec::new(),
        Some(j) => match &j.value {
            Value::Seq(items) => items
                .iter()
                .map(|i| i.string("a jump host"))
                .collect::<yaml::Result<_>>()?,
            Value::Null => Vec::new(),
            _ => vec![j.string("a jump host or a list of them")?],
        },
    };
    let become_with = match f.get("become") {
        None => None,
        Some(b) => Some(match b.string("`su` or `sudo`")?.as_str() {
            "su" => Become::Su,
            "sudo" => Become::Sudo,
            other => {
                return Err(Error::new(
                    b.span,
                    format!(
                        "invalid `become` `{other}`{}",
                        crate::diagnostic::did_you_mean(other, ["su", "sudo"])
                    ),
                )
                .help("expected `su` or `sudo`"))
            }
        }),
    };
    let connect_timeout = match f.get("connect_timeout") {
        None => None,
        Some(t) => {
            let s = t.string("a duration like 10s")?;
            Some(duration::parse(&s).map_err(|m| Error::new(t.span, m))?)
        }
    };
    Ok(SshSettings {
        user: f.opt_string("user")?,
        port: f.get("port").map(port).transpose()?,
        jump,
        become_with,
        identity_file: path("identity_file")?,
        known_hosts_file: path("known_hosts_file")?,
        config_file: path("config_file")?,
        connect_timeout,
    })
}

/// `~/` is the operator's home; other relative paths are relative to the inventory file.
fn resolve_path(s: &str, base: &std::path::Path) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = PathBuf::from(s);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

fn decode_vars(n: Option<&Node>) -> yaml::Result<Vars> {
    match n {
        Some(n) if !n.is_null() => n
            .entries("a mapping of variable names to values")?
            .into_iter()
            .map(|((k, key), v)| {
                check_identifier(key, &k, "variable")?;
                Ok((k, v.clone()))
            })
            .collect(),
        _ => Ok(Vec::new()),
    }
}
