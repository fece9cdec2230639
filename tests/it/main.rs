//! The integration tests: one binary, one module per area, so they build and
//! link once and run in parallel threads of one process. Run one area with
//! `cargo test --test it run_ssh::`, one test by its full path
//! (`cargo test --test it errors::yaml_bad_indentation`).
//!
//! Every test here must be safe next to the others in one process: no test
//! changes the process's environment, current directory or signal handlers;
//! each gets its own directories and `HOME` from `support::cli`, and
//! machine-wide resources (the login user, host locks of local hosts) are
//! named or locked per test.

mod support;

mod cli;
mod disk_and_memory;
mod env_name;
mod errors;
mod journal;
mod journals_v0;
mod library_app_sync;
mod library_apusic;
mod library_dameng;
mod library_demo;
mod library_license;
mod library_lvm;
mod library_tomcat;
mod library_upgrade;
mod lint;
mod log_markdown;
mod masters;
mod rollback_contract;
mod rollback_rolling;
mod rollback_ssh;
mod run_ssh;
mod secrets;
mod sign;
mod stops;
mod template_budget;
mod templates;
mod terminal;
mod transport;
mod truthful_hosts;
mod upload_template;
