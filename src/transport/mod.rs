//! How commands reach a host: SSH (one native-mux master per host) or a local subprocess.
