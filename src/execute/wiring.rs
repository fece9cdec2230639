//! How a run reaches its hosts and hears Ctrl-C; see [`Wiring`].

use super::interrupt::Interrupt;
use crate::transport::{self, Connection, Endpoint};
use std::path::Path;

/// What a run is wired to: its hosts' connections and the operator's Ctrl-C.
/// The product always runs with the default (the inventory's transports, real
/// signals); the engine tests (`execute/tests.rs`) wire in scripted hosts and
/// presses, so there is no fake mode an inventory or a flag could select.
#[derive(Default)]
pub(crate) struct Wiring {
    pub(crate) interrupt: Interrupt,
    /// Every host, and the control machine, answered by this scripted fleet.
    #[cfg(test)]
    pub(crate) fleet: Option<transport::fake::Fleet>,
}

impl Wiring {
    /// Opens every endpoint: at most 8 handshakes at once (the key exchange is CPU-bound).
    pub(super) async fn connect_all(
        &self,
        endpoints: &[Endpoint],
    ) -> Vec<Result<Connection, transport::TransportError>> {
        #[cfg(test)]
        if let Some(fleet) = &self.fleet {
            return endpoints
                .iter()
                .map(|ep| Ok(fleet.connection(&ep.host)))
                .collect();
        }
        transport::connect_all(endpoints, 8).await
    }

    /// Where `local: true` steps run: subprocesses with the run's own `TMPDIR`.
    pub(super) fn control_machine(&self, tmpdir: &Path) -> Connection {
        #[cfg(test)]
        if let Some(fleet) = &self.fleet {
            return fleet.connection(crate::plan::HostRef::CONTROL_NAME);
        }
        Connection::Local(transport::local::LocalConnection::with_tmpdir(
            &Endpoint::local(crate::plan::HostRef::CONTROL_NAME),
            tmpdir.to_path_buf(),
        ))
    }
}
