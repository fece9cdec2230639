//! The run's ssh hosts as ssh will reach them: login user, HostName, port and
//! jump hosts resolved by `ssh -G` (transport's `resolve`), once per run and in
//! parallel, while planning, so the dry-run, the journal and the log name the
//! account and address the connection really uses, not the inventory's guess.

use super::*;
use crate::transport::ssh::resolve::{resolve_all, Resolved};

/// Resolves every ssh host of `hosts` (local hosts are left out): every host whose
/// configuration ssh rejects is named in the error.
pub fn resolve(hosts: &[&Host]) -> Result<HashMap<String, Resolved>, Error> {
    let eps: Vec<Endpoint> = hosts
        .iter()
        .filter(|h| h.connection == ConnectionKind::Ssh)
        .map(|h| h.endpoint())
        .collect();
    let mut out = HashMap::new();
    let mut failed = Vec::new();
    for (ep, r) in eps.iter().zip(resolve_all(&eps)) {
        match r {
            Ok(r) => {
                out.insert(ep.host.clone(), r);
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(Error::SshConfig(failed))
    }
}

impl Planner {
    /// Resolves the logins of the hosts the run touches (see the module doc).
    /// Called once by the command that plans a run; a planner never resolved
    /// (unit tests on fake hosts) falls back to the inventory's user.
    pub fn resolve_logins(&mut self) -> Result<(), Error> {
        self.logins = resolve(&self.run_hosts())?;
        Ok(())
    }

    /// A re-planned run (rollback, once its secrets are known) keeps the logins
    /// resolved for the first plan: the same hosts, resolved once.
    pub fn keep_logins_of(&mut self, earlier: &Planner) {
        self.logins = earlier.logins.clone();
    }

    /// What ssh resolved for `host`, if it is an ssh host and was resolved.
    pub fn resolved(&self, host: &str) -> Option<&Resolved> {
        self.logins.get(host)
    }
}
