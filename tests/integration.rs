//! The integration tests, one program: each file beside this one is a
//! module of it. As separate programs, each linked the crate and its
//! dependencies and built its own copies of their generic code: two dozen
//! links, and most of the time it took to build the tests.
//!
//! `cargo test --test integration faults::` runs one file's tests.
//! `bounded_input.rs` stays a program of its own: its global allocator
//! counts every allocation in its process, which other tests would blur.

mod common;
mod sim;

mod anti_entropy;
mod cli;
mod cluster_processes;
mod crdt_laws;
mod deploy_files;
mod eviction_local;
mod faults;
mod get_or_load;
mod memory_bound;
mod mesh_embedded;
mod mesh_lifecycle;
mod mesh_membership;
mod mesh_security;
mod model_traces;
mod notify_racing;
mod notify_replicated;
mod partition_examples;
mod redis_differential;
mod redis_parity;
mod redis_parity_server;
mod redis_py;
mod resp;
mod resp_server;
mod resp_tracking;
mod resp_transactions;
mod simulation;
mod tombstones;
