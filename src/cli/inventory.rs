//! `opsrun inventory`: an environment's hosts as a tree of groups.

use super::*;

/// `logins`: what ssh resolved for the ssh hosts (`plan::logins`), shown
/// instead of the inventory's fields, which leave out what `~/.ssh/config` sets.
pub(super) fn inventory_tree(
    inv: &Inventory,
    logins: &HashMap<String, crate::transport::ssh::resolve::Resolved>,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}  ({}, {})",
        inv.name,
        inv.source.display_path(),
        crate::plural::count(inv.hosts.len(), "host", "hosts")
    );
    for (gi, g) in inv.groups.iter().enumerate() {
        let last_g = gi + 1 == inv.groups.len();
        let _ = writeln!(o, "{} {}", if last_g { "└──" } else { "├──" }, g.name);
        for (hi, hname) in g.hosts.iter().enumerate() {
            let last_h = hi + 1 == g.hosts.len();
            let Some(h) = inv.host(hname) else { continue };
            let conn = match h.connection {
                crate::transport::ConnectionKind::Local => "local".to_string(),
                crate::transport::ConnectionKind::Ssh if logins.contains_key(&h.name) => {
                    let r = &logins[&h.name];
                    format!("ssh {}@{}", r.user, r.destination())
                }
                crate::transport::ConnectionKind::Ssh => {
                    let user = h
                        .ssh
                        .user
                        .as_deref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default();
                    let port = h.ssh.port.map(|p| format!(":{p}")).unwrap_or_default();
                    format!("ssh {user}{}{port}", h.address)
                }
            };
            let _ = writeln!(
                o,
                "{}   {} {}  ({conn})",
                if last_g { " " } else { "│" },
                if last_h { "└──" } else { "├──" },
                h.name
            );
        }
    }
    o
}
