//! API tests: each spawns the real app on a random port (on SQLite or PostgreSQL) and talks HTTP to it.

mod admin;
mod alerts;
mod auth;
mod batches;
mod helpers;
mod hostile;
mod jobs;
mod ledger;
mod probes;
mod protection;
mod purchases;
mod reconcile;
mod reports;
mod webhooks;
